"""The hybrid-search ablation: the shipped head's vector alone and fused with BM25 at several weights, on one data
folder (the head's vectors computed once), beside the teacher references: the table in docs/heads.md#hybrid-search.

    python benchmarks/hybrid_ablation.py --data ../shared/data/coqa-train --holdout 30 \
        --output docs/hybrid-ablation-coqa-train-heldout.json

``--holdout N`` scores only the last N conversations (by story_id) of the folder, the turns train-head's
``--dev-holdout N`` held out from the shipped head: the set the default weights were picked on. Without it, every
judged query of the folder is scored (use that for report-only sets, never to pick).

``--configs standalone`` compares BM25 weights for queries of one user message (``Hybrid.standalone``) instead,
on folders of standalone questions; the weight was picked on squad-nyt queries 5,000-5,399 (never trained on):

    python benchmarks/hybrid_ablation.py --data runs/data/squad-nyt-5000-5399 --configs standalone \
        --output docs/hybrid-ablation-standalone-squad-nyt-5000-5399.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from native_retriever import NativeEmbedder
from native_retriever.bm25 import Hybrid
from native_retriever.data import RetrievalData, load_data
from native_retriever.evaluation import SYSTEMS, NativeContext, evaluate_systems
from native_retriever.files import atomic_file
from native_retriever.teacher import Teacher

#: (name, Hybrid or None): the vector alone; reciprocal-rank fusion (rrf) with the current question alone and with
#: the user message before it, two fusion constants and two stop-word lists; convex fusion of normalised scores.
CONFIGS = [
    ("vector alone", None),
    ("rrf q0.5", Hybrid(weights=(0.5,))),
    ("rrf q1.0", Hybrid(weights=(1.0,))),
    ("rrf q0.5 p0.25", Hybrid(weights=(0.5, 0.25))),
    ("rrf q0.5 p0.25 c60", Hybrid(weights=(0.5, 0.25), constant=60)),
    ("rrf q0.5 p0.25 en_plus", Hybrid(weights=(0.5, 0.25), stopwords="en_plus")),
    ("rrf q1.0 p0.5 en_plus", Hybrid(weights=(1.0, 0.5), stopwords="en_plus")),
    ("convex q0.5 p0.25 en_plus", Hybrid(weights=(0.5, 0.25), fusion="convex", stopwords="en_plus")),
    ("convex q1.0 p0.5 en_plus", Hybrid(weights=(1.0, 0.5), fusion="convex", stopwords="en_plus")),
    ("convex q1.0 p0.25 en_plus", Hybrid(weights=(1.0, 0.25), fusion="convex", stopwords="en_plus")),
    ("convex q2.0 p1.0 en_plus", Hybrid(weights=(2.0, 1.0), fusion="convex", stopwords="en_plus")),
    ("convex q1.0 p0.5", Hybrid(weights=(1.0, 0.5), fusion="convex")),
]
#: BM25's weight on a lone question (``Hybrid.standalone``), the conversation weights kept at the default's.
STANDALONE = [("vector alone", None)] + [
    (f"rrf standalone {w:g}", Hybrid(standalone=w)) for w in (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
]
REFERENCES = ("bm25-question", "teacher-question", "teacher-history", "teacher-last5")


def held_out(data: RetrievalData, conversations: int) -> RetrievalData:
    """The judged queries of the last ``conversations`` stories (in file order), over the whole corpus."""
    stories = list(dict.fromkeys(q.get("story_id", q["id"]) for q in reversed(data.queries)))[:conversations]
    queries = [q for q in data.queries if q.get("story_id", q["id"]) in set(stories)]
    name = f"{data.name}-last{conversations}"
    return RetrievalData(name, data.corpus, queries, {q["id"]: data.qrels[q["id"]] for q in queries})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data folder")
    parser.add_argument("--holdout", type=int, help="score only the last N conversations (by story_id)")
    parser.add_argument("--head", help="head folder (default: the shipped head)")
    parser.add_argument("--configs", choices=("conversation", "standalone"), default="conversation")
    parser.add_argument("--output", type=Path, required=True, help="JSON report")
    args = parser.parse_args()
    data = load_data(args.data, require_judged=True)
    if args.holdout:
        data = held_out(data, args.holdout)
    teacher = Teacher.from_pretrained()
    embedder = NativeEmbedder.from_pretrained(head=args.head, teacher=teacher)
    systems = [SYSTEMS[name] for name in REFERENCES]
    configs = STANDALONE if args.configs == "standalone" else CONFIGS
    systems += [NativeContext(name, hybrid=hybrid) for name, hybrid in configs]
    report = evaluate_systems(data, systems, context_embedder=embedder, teacher=teacher)
    report["configs"] = {name: None if h is None else {**asdict(h), "weights": list(h.weights)} for name, h in configs}
    for name, metrics in report["systems"].items():
        story = metrics.get("within_story", {})
        print(
            f"{name:30s} R@10 {metrics['recall@10']:.3f} MRR@10 {metrics['mrr@10']:.3f} "
            f"within-story MRR@10 {story.get('mrr@10', float('nan')):.3f}"
        )
    with atomic_file(args.output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
