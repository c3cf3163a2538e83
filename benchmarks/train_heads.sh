#!/usr/bin/env bash
# The commands that trained the shipped heads and the ablation heads (docs/heads.md). Run from the repository root.
# Caches go to $CACHE (hidden states of every conversation are computed once and shared by all runs).
set -euo pipefail
DATA=${DATA:-../shared/data}
CACHE=${CACHE:-${NATIVE_RETRIEVER_HOME:-$HOME/.cache/native-retriever}/training}
RUNS=${RUNS:-runs/heads}
COMMON=(--train "$DATA/coqa-train" "$DATA/squad-nyt" "$DATA/squad-newwiki" --max-train-queries 3000 1500 1500
        --dev "$DATA/coqa-dev" --cache "$CACHE")
# The full method (all three losses); the shipped head drops the contrastive loss, which won the ablation.
CONTEXT=(--architecture attention --span all --max-input-tokens 384 --num-heads 4 --lr 2e-3 --epochs 12 --patience 4)

run() {  # name, extra arguments
  local name=$1; shift
  native-retriever train-head "${COMMON[@]}" --output "$RUNS/$name" "$@"
}

# The shipped context head: all coqa-train turns, 5,000 questions of each SQuADShifts set, and the passages of
# coqa-train's own stories (its first 1,230 passages; the SQuAD v1.1 paragraphs after them are coqa-dev's
# distractors too) and of squad-nyt as one-message conversations; the epoch is picked on the last 30 coqa-train
# stories, so coqa-dev is never looked at.
BIG=(--train "$DATA/coqa-train" "$DATA/squad-nyt" "$DATA/squad-newwiki" --max-train-queries 5043 5000 5000
     --dev-holdout 30 --cache "$CACHE" "${CONTEXT[@]}")

case "${1:-all}" in
  shipped)
    native-retriever train-head "${BIG[@]}" --passage-queries 1230 2017 0 --output "$RUNS/passages"
    run query --input-mode query --span query --architecture linear --lr 3e-3 --epochs 30 --patience 6
    cp "$RUNS"/passages/{config.json,head.safetensors} native_retriever/heads/smollm2-minilm/
    cp "$RUNS"/query/{config.json,head.safetensors} native_retriever/heads/smollm2-minilm-query/ ;;
  more-queries)  # without the passages, and without InfoNCE (as the first recipe): what the extra queries alone give
    native-retriever train-head "${BIG[@]}" --contrastive-weight 0 --output "$RUNS/more-queries" ;;
  ablation-shipped)  # losses removed from the shipped recipe (docs/heads.md)
    for weights in "contrastive" "align" "rank" "contrastive align" "contrastive rank"; do
      zero=(); for w in $weights; do zero+=(--"$w"-weight 0); done
      native-retriever train-head "${BIG[@]}" --passage-queries 1230 2017 0 "${zero[@]}" \
        --output "$RUNS/big-no-${weights// /-}"
    done ;;
  holdout)  # the first recipe with 4,096 coqa-train turns, epoch picked on held-out coqa-train conversations instead of coqa-dev
    native-retriever train-head --train "$DATA/coqa-train" "$DATA/squad-nyt" "$DATA/squad-newwiki" \
      --max-train-queries 4096 1500 1500 --dev-holdout 30 --cache "$CACHE" --output "$RUNS/holdout" \
      "${CONTEXT[@]}" --contrastive-weight 0 ;;
  ablation)  # the loss ablation, on the first recipe (3,000 / 1,500 / 1,500 queries, epoch picked on coqa-dev)
    run no-contrastive "${CONTEXT[@]}" --contrastive-weight 0
    run context "${CONTEXT[@]}"
    run no-align "${CONTEXT[@]}" --align-weight 0
    run no-rank "${CONTEXT[@]}" --rank-weight 0
    run linear-last-user --architecture linear --span last_user --lr 3e-3 --epochs 30 --patience 6 ;;
  *) "$0" shipped; "$0" ablation-shipped; "$0" more-queries; "$0" ablation ;;
esac
