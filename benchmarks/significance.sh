#!/usr/bin/env bash
# Saved runs and paired tests on all of coqa-dev (docs/evaluation.md "All systems on coqa-dev, tested",
# docs/latent.md "Is the 80-step gap real?" and "A second seed"). Needs the 80-step adapters of
# `latent_ablation.sh trend` and the seed-1 runs of `latent_ablation.sh seeds`; one core per eval.
#   bash benchmarks/significance.sh runs      # the three evals with --save-runs (about 30-45 min each, two at once)
#   bash benchmarks/significance.sh compare   # the paired tests -> docs/compare-coqa-dev*.json (seconds)
set -euo pipefail
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${DATA:-../shared/data/coqa-dev}
LATENT=${LATENT:-runs/latent}
R=${R:-runs/eval-runs}
EVAL=(native-retriever eval --data "$DATA" --batch-size 16)

case "${1:-compare}" in
  runs)
    "${EVAL[@]}" --systems latent --latent-adapter "$LATENT/full-n320" --save-runs "$R/full-n320" &
    "${EVAL[@]}" --systems latent-contrastive --latent-contrastive-adapter "$LATENT/contrastive-n320" \
      --save-runs "$R/contrastive-n320" &
    wait
    native-retriever eval --data "$DATA" --generated-queries runs/gte-queries-coqa-dev.json \
      --systems bm25-question,teacher-question,teacher-history,generate-then-encode,native-context --save-runs "$R/head"
    ;;
  compare)
    PAIR=("$R/full-n320/latent.trec" "$R/contrastive-n320/latent-contrastive.trec")
    native-retriever compare "${PAIR[@]}" --data "$DATA" --output docs/compare-coqa-dev-latent.json
    native-retriever compare "${PAIR[@]}" --data "$DATA" --test fisher --output docs/compare-coqa-dev-latent-fisher.json
    native-retriever compare "$LATENT/eval/full-closed-s1/latent.trec" \
      "$LATENT/eval/contrastive-s1/latent-contrastive.trec" --data "$DATA" --output docs/compare-coqa-dev-latent-seed1.json
    native-retriever compare "$R"/head/{bm25-question,teacher-question,teacher-history,generate-then-encode,native-context}.trec \
      "${PAIR[@]}" --data "$DATA" --output docs/compare-coqa-dev.json
    ;;
  *) echo "usage: $0 runs|compare" >&2; exit 2 ;;
esac
