#!/usr/bin/env bash
# Latent-view (LaSER) ablation on CoQA, sized for a shared 2-core CPU (one core per run: OMP_NUM_THREADS=1).
#   bash benchmarks/latent_ablation.sh train   # the ablation: seven adapters on the same coqa-train sample
#   bash benchmarks/latent_ablation.sh closed  # the full method and the rows that read the explicit view, closed layout
#   bash benchmarks/latent_ablation.sh trend   # full and contrastive only on 80 and 320 queries (20 and 80 steps)
#   bash benchmarks/latent_ablation.sh seeds   # the 160-query pair with seed 1, then both on all of coqa-dev
#   bash benchmarks/latent_ablation.sh eval    # ablation table, K sweep and latency on the coqa-dev subset
#   bash benchmarks/latent_ablation.sh top8    # the earlier runs with LoRA on the top 8 layers only (docs/latent.md)
# Two runs go at once (one per core), except the sequential tails of `closed` and `trend`, which are meant to run
# side by side once the first pair of `closed` is done (`closed & trend & wait`: at most three runs, about 20 GB);
# finished adapters are skipped. Adapters and logs go to $RUNS (default
# runs/latent, outside git); results JSON/PNG to docs/.
set -euo pipefail
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUNS=${RUNS:-runs/latent}
DATA=${DATA:-../shared/data}
N=${N:-160}            # training queries per run (a seeded random sample of coqa-train): 40 optimizer steps
mkdir -p "$RUNS"
# Code defaults except: lr 5e-4 (40 steps), windows 160/112/48 tokens, no accumulation (batch 4 queries).
COMMON=(--train "$DATA/coqa-train" --max-train-queries "$N" --max-tokens 160 --document-max-tokens 112
        --max-rationale-tokens 48 --batch-size 4 --grad-accum 1 --lr 5e-4 --checkpoint-every 10)
# The full method as run here: output KL at weight 1 and trajectory alignment at weight 1 (defaults: 10 and 0.1,
# the row "full, default weights").
FULL=(--distill-weight 1 --trajectory-weight 1)
REPLY=(--explicit-layout reply)  # the ablation rows were trained in the first layout of the explicit view
CLOSED=(--explicit-layout closed)  # the default layout, named so the runs do not depend on the default
CONTRASTIVE=(--k 1 --explicit-weight 0 --distill-weight 0 --trajectory-weight 0)

train() {  # name, extra flags...
  local name=$1; shift
  if [[ -f "$RUNS/$name/latent_config.json" ]]; then echo "skip $name (done)"; return; fi
  /usr/bin/time -f "$name %e s" -a -o "$RUNS/times.txt" \
    native-retriever train-latent "${COMMON[@]}" -o "$RUNS/$name" --resume "$@" > "$RUNS/$name.log" 2>&1
  tail -n 8 "$RUNS/$name.log"
}

case "${1:-train}" in
  train)
    train contrastive "${CONTRASTIVE[@]}" & train full-design "${REPLY[@]}" & wait
    train no-explicit --explicit-weight 0 --distill-weight 0 --trajectory-weight 0 & train k1 "${FULL[@]}" "${REPLY[@]}" --k 1 & wait
    train no-trajectory "${FULL[@]}" "${REPLY[@]}" --trajectory-weight 0 & train no-distill "${FULL[@]}" "${REPLY[@]}" --distill-weight 0 & wait
    train full "${FULL[@]}" "${REPLY[@]}"
    ;;
  seeds)  # the 40-step pair again with seed 1 (another sample, LoRA init, order and negatives), on all of coqa-dev
    train full-closed-s1 "${FULL[@]}" "${CLOSED[@]}" --seed 1 & train contrastive-s1 "${CONTRASTIVE[@]}" --seed 1 & wait
    EVAL=(native-retriever eval --data "$DATA/coqa-dev" --batch-size 16)
    "${EVAL[@]}" --systems latent --latent-adapter "$RUNS/full-closed-s1" --save-runs "$RUNS/eval/full-closed-s1" \
      --output docs/eval-coqa-dev-latent-full-method-seed1.json > "$RUNS/eval-full-closed-s1.log" 2>&1 &
    "${EVAL[@]}" --systems latent-contrastive --latent-contrastive-adapter "$RUNS/contrastive-s1" \
      --save-runs "$RUNS/eval/contrastive-s1" --output docs/eval-coqa-dev-latent-contrastive-seed1.json \
      > "$RUNS/eval-contrastive-s1.log" 2>&1 &
    wait
    ;;
  closed)  # explicit input = conversation + rationale + the next generation prompt (the default layout)
    train full-closed "${FULL[@]}" "${CLOSED[@]}" & train full-closed-design "${CLOSED[@]}" & wait
    train no-trajectory-closed "${FULL[@]}" "${CLOSED[@]}" --trajectory-weight 0
    train no-distill-closed "${FULL[@]}" "${CLOSED[@]}" --distill-weight 0
    train k1-closed "${FULL[@]}" "${CLOSED[@]}" --k 1
    ;;
  trend)  # one core: the full method (closed layout) and contrastive only on 320, then 80 queries
    for n in 320 80; do
      COMMON[3]=$n
      train "full-n$n" "${FULL[@]}" "${CLOSED[@]}"
      train "contrastive-n$n" "${CONTRASTIVE[@]}"
    done
    ;;
  top8)  # LoRA on the top 8 of 30 layers, default loss weights: 40 queries (10 steps), and the 160-query pair
    RUNS=$RUNS/top8
    mkdir -p "$RUNS"
    COMMON[3]=40
    COMMON+=(--lora-layers 8 "${REPLY[@]}")
    train full & train contrastive "${CONTRASTIVE[@]}" & wait
    train no-explicit --explicit-weight 0 --distill-weight 0 --trajectory-weight 0 & train no-trajectory --trajectory-weight 0 & wait
    train no-distill --distill-weight 0 & train k1 --k 1 & wait
    for n in 20 80; do COMMON[3]=$n; train "full-n$n"; done
    train full-distill1 --distill-weight 1
    COMMON[3]=160
    train full-n160 & train contrastive-n160 "${CONTRASTIVE[@]}" & wait
    ;;
  eval)
    python benchmarks/latent_eval.py --runs "$RUNS" --data "$DATA/coqa-dev" --output docs/latent-results.json
    ;;
esac
