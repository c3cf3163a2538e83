"""Bytes the training cache takes per conversation, measured on real conversations, and projected to big LLMs.

For each data folder the shipped head's window cache is built with the default LLM (one real prefill per
conversation, as ``train-head`` does), then measured on disk: window tokens and bytes per conversation, next to the
tokens a cache of the whole rendered conversation with its appended question would hold (the layout before the
window cut). Every example is then read once from the memory-mapped shards, timing it and the anonymous memory it
adds. The projection to hidden size 4096 scales the measured bytes by 4096 / H (float16: 2 bytes a state value).

    OMP_NUM_THREADS=2 python benchmarks/cache_size.py --data ../shared/data/coqa-dev ../shared/data/squad-nyt \
        --max-queries 0 1000 --output docs/cache-size.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from native_retriever.conversation import PromptFormat, encode_conversation
from native_retriever.data import load_data
from native_retriever.heads import ProjectionHead, shipped_head_for
from native_retriever.models import llm_info, load_llm
from native_retriever.training.cache import cache_hidden_states

BIG_HIDDEN = 4096
MILLION = 1_000_000


def anonymous_rss() -> int:
    """Bytes of this process's memory not backed by a file (Linux)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("RssAnon:"))) * 1024


def measure(model, tokenizer, head, folder: str, max_queries: int | None, cache_root: Path) -> dict:
    data = load_data(folder, max_queries=max_queries or None)
    fmt = PromptFormat.from_dict(head.config.prompt_format)
    window = (head.config.span, head.config.max_input_tokens)
    started = time.perf_counter()
    cache = cache_hidden_states(
        model, tokenizer, data, cache_root, window=window, layers=head.config.layers, prompt_format=fmt
    )
    build_s = time.perf_counter() - started
    on_disk = sum(p.stat().st_size for p in cache_root.glob("states-*/shard-*"))
    whole = [
        len(encode_conversation(tokenizer, q["messages"], fmt, query=q["question"]).input_ids) for q in data.queries
    ]
    before, started = anonymous_rss(), time.perf_counter()
    checksum = sum(float(cache[i].float().sum()) for i in range(len(cache)))
    read_s = time.perf_counter() - started
    n, hidden = len(cache), int(cache.spec["hidden_size"])
    per_conversation = on_disk / n
    return {
        "data": data.name,
        "conversations": n,
        "window": {"span": window[0], "max_input_tokens": window[1]},
        "window_tokens_per_conversation": round(cache.tokens / n, 1),
        "whole_conversation_tokens_per_conversation": round(sum(whole) / n, 1),
        "longest_conversation_tokens": max(whole),
        "bytes_on_disk": on_disk,
        "bytes_per_conversation": round(per_conversation),
        "state_bytes_per_token": 2 * hidden,
        "build_seconds": round(build_s, 1),
        "read_all_seconds": round(read_s, 2),
        "read_all_added_anonymous_memory_bytes": anonymous_rss() - before,
        "checksum_finite": bool(torch.isfinite(torch.tensor(checksum))),
        "projected_bytes_per_conversation_at_4096": round(per_conversation * BIG_HIDDEN / hidden),
        "projected_gb_for_1m_conversations_at_4096": round(per_conversation * BIG_HIDDEN / hidden * MILLION / 1e9, 1),
        "window_bound_gb_for_1m_conversations_at_4096": round(window[1] * 2 * BIG_HIDDEN * MILLION / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="data folders")
    parser.add_argument("--max-queries", nargs="+", type=int, help="per folder: its first N queries (0: all)")
    parser.add_argument("--output", type=Path, default=Path("docs/cache-size.json"))
    args = parser.parse_args()
    limits = args.max_queries or [0] * len(args.data)
    if len(limits) != len(args.data):
        parser.error("give one --max-queries per --data folder")
    model, tokenizer = load_llm()
    head = ProjectionHead.from_pretrained(shipped_head_for(llm_info(model)))
    results = []
    for folder, limit in zip(args.data, limits):
        with tempfile.TemporaryDirectory() as root:  # a fresh cache: what a first training run writes
            results.append(measure(model, tokenizer, head, folder, limit, Path(root)))
        print(json.dumps(results[-1]), flush=True)
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}",
        "llm": llm_info(model)["name"],
        "hidden_size": int(model.config.hidden_size),
        "results": results,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
