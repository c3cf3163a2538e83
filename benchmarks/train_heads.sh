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
CONTEXT=(--architecture attention --tokens all --max-input-tokens 384 --num-heads 4 --lr 2e-3 --epochs 12 --patience 4)

run() {  # name, extra arguments
  local name=$1; shift
  native-retriever train-head "${COMMON[@]}" --output "$RUNS/$name" "$@"
}

case "${1:-all}" in
  shipped)
    run no-contrastive "${CONTEXT[@]}" --contrastive-weight 0
    run query --input-mode query --tokens query --architecture linear --lr 3e-3 --epochs 30 --patience 6
    cp "$RUNS"/no-contrastive/{config.json,head.safetensors} native_retriever/heads/smollm2-minilm/
    cp "$RUNS"/query/{config.json,head.safetensors} native_retriever/heads/smollm2-minilm-query/ ;;
  holdout)  # the shipped recipe, epoch picked on held-out coqa-train conversations instead of coqa-dev
    native-retriever train-head --train "$DATA/coqa-train" "$DATA/squad-nyt" "$DATA/squad-newwiki" \
      --max-train-queries 4096 1500 1500 --dev-holdout 30 --cache "$CACHE" --output "$RUNS/holdout" \
      "${CONTEXT[@]}" --contrastive-weight 0 ;;
  ablation)
    run context "${CONTEXT[@]}"
    run no-align "${CONTEXT[@]}" --align-weight 0
    run no-rank "${CONTEXT[@]}" --rank-weight 0
    run linear-last-user --architecture linear --tokens last_user --lr 3e-3 --epochs 30 --patience 6 ;;
  *) "$0" shipped; "$0" ablation ;;
esac
