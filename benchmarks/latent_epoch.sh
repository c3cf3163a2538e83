#!/usr/bin/env bash
# The latent view's open question at a real budget: the full LaSER method against contrastive only, each trained
# for one epoch over all of coqa-train (5,043 turns) on one device, both scored on all of coqa-dev with saved runs,
# then a paired t-test (docs/latent.md, "What a GPU would settle"). Meant for a machine with a GPU: on the 2-core
# CPU of docs/latent.md one epoch at these windows is about 23 h per adapter. The two trainings, then the two
# evaluations, run at once.
#   DEVICE=cuda bash benchmarks/latent_epoch.sh
#   DEVICE=cpu N=8 EVAL_QUERIES=10 DEV=/tmp/small-dev bash benchmarks/latent_epoch.sh   # the same steps, tiny
# Settings (environment): DEVICE (auto), TRAIN / DEV data folders, N training queries (empty: all), SEED (0),
# BATCH queries per step (16), LR (2e-4), EVAL_QUERIES (empty: all judged turns of DEV), RUNS (adapters, logs and
# TREC runs; default runs/latent-epoch, outside git), OUT (the eval and compare JSON; default docs).
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DEVICE=${DEVICE:-auto}
DATA=${DATA:-../shared/data}
TRAIN=${TRAIN:-$DATA/coqa-train}
DEV=${DEV:-$DATA/coqa-dev}
RUNS=${RUNS:-runs/latent-epoch}
OUT=${OUT:-docs}
SEED=${SEED:-0}
mkdir -p "$RUNS" "$OUT"
# Code defaults (windows 512/256/256 tokens, LoRA r 64 / alpha 32 on all layers, K 3, temperatures), except the
# loss weights measured best here (output KL 1, trajectory 1) and a larger batch with its learning rate.
COMMON=(--train "$TRAIN" --device "$DEVICE" --seed "$SEED" --batch-size "${BATCH:-16}" --grad-accum 1
        --lr "${LR:-2e-4}" --checkpoint-every 50 ${N:+--max-train-queries "$N"})
FULL=(--explicit-layout closed --distill-weight 1 --trajectory-weight 1)
CONTRASTIVE=(--k 1 --explicit-weight 0 --distill-weight 0 --trajectory-weight 0)
LIMIT=(${EVAL_QUERIES:+--max-queries "$EVAL_QUERIES"})

train() {  # name, extra flags...: skipped when done, resumed when a checkpoint is there
  local name=$1; shift
  if [[ -f "$RUNS/$name/latent_config.json" ]]; then echo "skip $name (done)"; return; fi
  native-retriever train-latent "${COMMON[@]}" -o "$RUNS/$name" --resume "$@" > "$RUNS/$name.log" 2>&1 \
    || { tail -n 20 "$RUNS/$name.log" >&2; return 1; }
  tail -n 6 "$RUNS/$name.log"
}

evaluate() {  # system, adapter name
  native-retriever eval --data "$DEV" "${LIMIT[@]}" --device "$DEVICE" --batch-size 32 --systems "$1" \
    "--$1-adapter" "$RUNS/$2" --save-runs "$RUNS/eval/$2" --output "$OUT/eval-coqa-dev-latent-epoch-$2.json" \
    > "$RUNS/eval-$2.log" 2>&1 || { tail -n 20 "$RUNS/eval-$2.log" >&2; return 1; }
  tail -n 1 "$RUNS/eval-$2.log"
}

train "full-s$SEED" "${FULL[@]}" & full=$!
train "contrastive-s$SEED" "${CONTRASTIVE[@]}" & contrastive=$!
wait $full; wait $contrastive  # each wait fails the script when its job failed
evaluate latent "full-s$SEED" & full=$!
evaluate latent-contrastive "contrastive-s$SEED" & contrastive=$!
wait $full; wait $contrastive
native-retriever compare "$RUNS/eval/full-s$SEED/latent.trec" "$RUNS/eval/contrastive-s$SEED/latent-contrastive.trec" \
  --data "$DEV" "${LIMIT[@]}" --output "$OUT/compare-coqa-dev-latent-epoch-s$SEED.json"
