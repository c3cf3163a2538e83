"""Tabulate trained heads (their config.json: architecture, tokens, losses, dev metrics) as Markdown.

python benchmarks/head_report.py runs/heads/* --output docs/heads.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    train = config["training"]["config"]
    dev = config["metrics"]["dev"]
    epochs = config["metrics"]["history"]
    best = max(epochs, key=lambda e: e["recall@10"])["epoch"]
    losses = "+".join(
        name
        for name in ("align", "contrastive", "rank")
        if train[f"{name}_weight" if name != "align" else "align_weight"]
    )
    data = ", ".join(f"{d['name']} ({d['queries']})" for d in config["training"]["data"])
    span = config.get("span", config.get("tokens"))  # "tokens": config version 1
    return (
        f"| {folder.name} | {config['architecture']} | {span} | {config['layers']} | {losses} | "
        f"{train['target']} | {dev['recall@10']:.3f} | {dev['mrr@10']:.3f} | {dev['ndcg@10']:.3f} | "
        f"{best}/{len(epochs)} | {data} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads", nargs="+", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    header = (
        "| head | architecture | tokens | layers | losses | align target | dev R@10 | dev MRR@10 | dev nDCG@10 | "
        "best epoch / run | training data (queries) |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    table = "\n".join([header] + [row(h) for h in args.heads if (h / "config.json").is_file()])
    if args.output:
        args.output.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
