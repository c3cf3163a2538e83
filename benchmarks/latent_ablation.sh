#!/usr/bin/env bash
# Latent-view (LaSER) ablation on CoQA, sized for a shared 2-core CPU (one core: OMP_NUM_THREADS=1).
#   bash benchmarks/latent_ablation.sh train   # six adapters on the same coqa-train sample (skips finished ones)
#   bash benchmarks/latent_ablation.sh trend   # the full method on 20 and 80 queries
#   bash benchmarks/latent_ablation.sh extra   # the full method with the output KL at weight 1
#   bash benchmarks/latent_ablation.sh long    # full and contrastive only on 160 queries (two processes)
#   bash benchmarks/latent_ablation.sh eval    # ablation table, K sweep and latency on the coqa-dev subset
# Adapters and logs go to $RUNS (default runs/latent, outside git); results JSON/PNG to docs/.
set -euo pipefail
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUNS=${RUNS:-runs/latent}
DATA=${DATA:-../shared/data}
N=${N:-40}             # training queries per run (a seeded random sample of coqa-train)
mkdir -p "$RUNS"
COMMON=(--train "$DATA/coqa-train" --max-train-queries "$N" --max-tokens 160 --document-max-tokens 112
        --max-rationale-tokens 48 --lora-layers 8 --batch-size 4 --grad-accum 1 --lr 5e-4 --checkpoint-every 5)

train() {  # name, extra flags...
  local name=$1; shift
  if [[ -f "$RUNS/$name/latent_config.json" ]]; then echo "skip $name (done)"; return; fi
  /usr/bin/time -f "$name %e s" -a -o "$RUNS/times.txt" \
    native-retriever train-latent "${COMMON[@]}" -o "$RUNS/$name" --resume "$@" 2>&1 | tail -n 8 | tee "$RUNS/$name.log"
}

case "${1:-train}" in
  train)
    train full
    train contrastive  --k 1 --explicit-weight 0 --distill-weight 0 --trajectory-weight 0
    train no-explicit  --explicit-weight 0 --distill-weight 0 --trajectory-weight 0
    train no-trajectory --trajectory-weight 0
    train no-distill   --distill-weight 0
    train k1           --k 1
    ;;
  trend)
    for n in 20 80; do COMMON[3]=$n; train "full-n$n"; done
    ;;
  extra)  # the full method with the output KL at weight 1 instead of 10
    train full-distill1 --distill-weight 1
    ;;
  long)  # 160 queries (40 steps): the full method and contrastive only, side by side
    COMMON[3]=160
    train full-n160 &
    train contrastive-n160 --k 1 --explicit-weight 0 --distill-weight 0 --trajectory-weight 0 &
    wait
    ;;
  eval)
    python benchmarks/latent_eval.py --runs "$RUNS" --data "$DATA/coqa-dev" --output docs/latent-results.json --gte
    ;;
esac
