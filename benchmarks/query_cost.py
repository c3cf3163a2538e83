"""Query-side cost of native-context vs the teacher, and memory of several embedders on one LLM.

Batch 1, warm-up first, every step timed separately in the same process on conversations from a data folder:
- ``llm_prefill``: one prefill of the chat-formatted conversation (what native-context needs when the agent has
  not already run it);
- ``head``: the projection head alone on those hidden states;
- ``teacher_question`` / ``teacher_history``: the teacher encoding the question / the concatenated conversation.
Writes JSON and a Markdown table (p50/p95 in ms, ratios of p50s).

    python benchmarks/query_cost.py --data ../shared/data/coqa-dev --queries 200 --output docs/query-cost.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from native_retriever import NativeEmbedder
from native_retriever.data import load_data
from native_retriever.models import load_llm
from native_retriever.states import token_states
from native_retriever.teacher import Teacher


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, 1000 * (time.perf_counter() - start)


def summary(samples: list[float]) -> dict:
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3)}


def parameter_bytes(modules) -> int:
    """Bytes of distinct parameter storage across modules (shared tensors counted once)."""
    seen = {}
    for module in modules:
        for p in module.parameters():
            seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--output", default="docs/query-cost.json")
    args = parser.parse_args()

    data = load_data(args.data, max_queries=args.queries)
    model, tokenizer = load_llm()
    rss_llm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    teacher = Teacher.from_pretrained()
    embedder = NativeEmbedder(model, tokenizer, teacher=teacher)
    head = embedder.head
    times = {"llm_prefill": [], "head": [], "teacher_question": [], "teacher_history": [], "native_context_total": []}
    queries = data.queries
    for round_number, query in enumerate(queries[: args.warmup] + queries):
        encoded = embedder.tokenize(query["messages"])
        states, prefill = timed(token_states, model, [encoded.input_ids], head.config.layers)
        _, head_ms = timed(embedder.head_vectors, states, [encoded])
        _, question_ms = timed(teacher.encode, [query["question"]])
        history = teacher.history_query(query["messages"])
        _, history_ms = timed(teacher.encode, [history])
        _, total_ms = timed(embedder.embed_conversation, query["messages"])
        if round_number >= args.warmup:
            for name, value in zip(times, (prefill, head_ms, question_ms, history_ms, total_ms)):
                times[name].append(value)
    steps = {name: summary(values) for name, values in times.items()}
    ratio = lambda a, b: round(steps[a]["p50_ms"] / steps[b]["p50_ms"], 1)  # noqa: E731

    # Memory: several embedders on one LLM hold one copy of its weights.
    gc.collect()
    before = parameter_bytes([model])
    extra = [NativeEmbedder(model, tokenizer, teacher=teacher) for _ in range(3)]
    after = parameter_bytes([model] + [e.model for e in extra] + [e.head for e in extra])
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "data": data.name,
        "queries": len(queries),
        "batch_size": 1,
        "steps": steps,
        "ratios": {
            "teacher_question_over_head": ratio("teacher_question", "head"),
            "teacher_history_over_head": ratio("teacher_history", "head"),
        },
        "memory": {
            "llm_parameter_mb": round(before / 2**20, 1),
            "parameter_mb_with_4_embedders": round(after / 2**20, 1),
            "head_parameter_mb": round(parameter_bytes([head]) / 2**20, 2),
            "peak_rss_after_llm_load_mb": round(rss_llm, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
