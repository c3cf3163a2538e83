"""Score trained heads on a data folder from the training hidden-state cache (the same digits as `eval`, no LLM pass
per head): the coqa-dev columns of the ablation tables in docs/heads.md.

    OMP_NUM_THREADS=1 python benchmarks/score_heads.py --data ../shared/data/coqa-dev --cache CACHE \
        runs/heads/* --output docs/heads-coqa-dev.json

CACHE is train-head's --cache (default $NATIVE_RETRIEVER_HOME/training); the data folder's states are cached there
first if missing (one LLM pass per head window).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from native_retriever.conversation import PromptFormat
from native_retriever.data import load_data
from native_retriever.heads import ProjectionHead
from native_retriever.models import cache_dir, load_llm
from native_retriever.teacher import Teacher
from native_retriever.training.cache import cache_hidden_states, teacher_vectors
from native_retriever.training.trainer import Split, dev_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads", nargs="+", type=Path, help="head folders")
    parser.add_argument("--data", required=True, help="data folder to score on (all its judged queries)")
    parser.add_argument("--cache", type=Path, default=cache_dir() / "training")
    parser.add_argument("--output", type=Path, help="JSON file: {head folder name: metrics}")
    args = parser.parse_args()
    heads = {path.name: ProjectionHead.from_pretrained(path) for path in args.heads}
    first = next(iter(heads.values())).config
    model, tokenizer = load_llm()
    data = load_data(args.data)
    fmt = PromptFormat.from_dict(first.prompt_format)
    corpus, targets = teacher_vectors(Teacher.from_pretrained(), data, args.cache, "history")
    results = {}
    for name, head in heads.items():
        config = head.config
        if config.layers != first.layers or config.prompt_format != first.prompt_format:
            raise SystemExit(f"{name} reads other layers or another prompt format than {args.heads[0]}; score apart.")
        window = (config.span, config.max_input_tokens)  # heads of one window share a cache
        states = cache_hidden_states(
            model, tokenizer, data, args.cache / "states", window=window, layers=first.layers, prompt_format=fmt
        )
        results[name] = {**dev_metrics(head, Split(data, states, corpus, targets)), "held_out": config.metrics["dev"]}
        print(name, json.dumps(results[name]), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"data": data.name, "heads": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
