"""Render `native-retriever eval --output` reports as one Markdown table, with retention vs generate-then-encode.

python benchmarks/eval_table.py docs/eval-coqa-dev.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("recall@10", "mrr@10", "ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="later reports override systems of earlier ones")
    args = parser.parse_args()
    systems: dict[str, dict] = {}
    for path in args.reports:
        systems.update(json.loads(path.read_text())["systems"])
    base = systems.get("generate-then-encode")
    print("| system | R@10 | MRR@10 | nDCG@10 | queries | R@10 / g-t-e | MRR@10 / g-t-e |")
    print("|---|---|---|---|---|---|---|")
    for name, m in systems.items():
        ratios = [
            f"{m[k] / base[k]:.2f} ({100 * (m[k] - base[k]):+.1f} pts)" if base else "-"
            for k in ("recall@10", "mrr@10")
        ]
        print(
            f"| {name} | "
            + " | ".join(f"{m[k]:.3f}" for k in METRICS)
            + f" | {m['queries']} | "
            + " | ".join(ratios)
            + " |"
        )


if __name__ == "__main__":
    main()
