"""Write a subset of a data folder (docs/data-format.md) for leave-out checks and held-out slices.

A leave-out check trains a head without one CoQA source and measures it on that source's stories only:

    python benchmarks/subsets.py ../shared/data/coqa-train runs/data/coqa-train-no-gutenberg --drop-source gutenberg
    python benchmarks/subsets.py ../shared/data/coqa-dev runs/data/coqa-dev-gutenberg --keep-source gutenberg
    python benchmarks/subsets.py ../shared/data/coqa-dev runs/data/coqa-dev-not-gutenberg \
        --keep-source race mctest cnn wikipedia
    python benchmarks/subsets.py ../shared/data/squad-nyt runs/data/squad-nyt-5000-5399 --queries 5000 5400

Dropping a source also drops its stories' passages from the corpus (the SQuAD distractors stay), so the
training run sees no text of it; keeping a source keeps the whole corpus, so the measurement ranks against
every passage as the full set does. ``--queries A B`` keeps queries A..B-1 in file order (after the source
filter). The data is written outside the repository (it carries the benchmark canary).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_folder", type=Path)
    parser.add_argument("output", type=Path)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--drop-source", help="leave out the queries and story passages of this source")
    group.add_argument("--keep-source", nargs="+", help="keep only the queries of these sources (the corpus whole)")
    parser.add_argument("--queries", nargs=2, type=int, metavar=("START", "END"), help="keep queries START..END-1")
    args = parser.parse_args()

    queries = read_jsonl(args.source_folder / "queries.jsonl.gz")
    corpus = read_jsonl(args.source_folder / "corpus.jsonl.gz")
    if args.drop_source:
        dropped = {q["story_id"] for q in queries if q["source"] == args.drop_source}
        if not dropped:
            parser.error(f"no query has source {args.drop_source!r}")
        queries = [q for q in queries if q["source"] != args.drop_source]
        corpus = [p for p in corpus if p["id"].split("#")[0] not in dropped]
    if args.keep_source:
        queries = [q for q in queries if q["source"] in args.keep_source]
        if not queries:
            parser.error(f"no query has a source of {args.keep_source}")
    if args.queries:
        queries = queries[args.queries[0] : args.queries[1]]
    kept = {q["id"] for q in queries}
    passages = {p["id"] for p in corpus}
    qrels = [
        line
        for line in (args.source_folder / "qrels.tsv").read_text().splitlines()
        if line.strip() and line.split("\t")[0] in kept and line.split("\t")[2] in passages
    ]
    args.output.mkdir(parents=True, exist_ok=False)
    write_jsonl(args.output / "queries.jsonl.gz", queries)
    write_jsonl(args.output / "corpus.jsonl.gz", corpus)
    (args.output / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    print(f"{args.output}: {len(queries)} queries, {len(corpus)} passages, {len(qrels)} qrels")


if __name__ == "__main__":
    main()
