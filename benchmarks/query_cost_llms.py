"""Query-side cost of native-context on the two built-in agent LLMs, side by side in one run.

SmolLM2-135M-Instruct with its shipped attention-pooling head, and Qwen2.5-Coder-0.5B-Instruct with a randomly
initialised head of the same architecture (no head is trained for Qwen yet; a head's cost depends on its shape, not
its weights). Batch 1, warm-up first; per conversation the two LLMs take turns (their order alternates), every step
timed separately in the same process:
- ``llm_prefill``: one prefill of the chat-formatted conversation returning hidden states (standalone native-context);
- ``head``: the projection head alone on those states;
- ``prefill_with_capture``: the agent's own prefill (``logits_to_keep=1``) observed by ``NativeEmbedder.capture()``;
- ``capture_head``: ``cap.vectors`` after it, what retrieval costs when the agent prefills for its own answer;
- ``embed_conversation``: end to end (format, prefill, head);
and, once per conversation, the teacher encoding the question. The machine's CPU use by other processes over the
run is recorded (from /proc/stat and this process's own CPU time), since the machine is shared.

    OMP_NUM_THREADS=1 python benchmarks/query_cost_llms.py --data ../shared/data/coqa-dev --queries 50 \\
        --output docs/query-cost-qwen.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from native_retriever import NativeEmbedder
from native_retriever.data import load_data
from native_retriever.embedder import DEFAULT_HEAD
from native_retriever.heads import HeadConfig, ProjectionHead
from native_retriever.models import DEFAULT_LLM, QWEN_LLM, llm_info, load_llm
from native_retriever.states import token_states
from native_retriever.teacher import Teacher

STEPS = ("llm_prefill", "head", "prefill_with_capture", "capture_head", "embed_conversation")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, 1000 * (time.perf_counter() - start)


def summary(samples: list[float]) -> dict:
    p50, p95 = np.percentile(samples, [50, 95])
    return {
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "mean_ms": round(float(np.mean(samples)), 3),
    }


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of this process) so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def random_head_like_shipped(model) -> ProjectionHead:
    """The shipped head's architecture and settings, sized for ``model``, randomly initialised (seed 0)."""
    shipped = HeadConfig.load(DEFAULT_HEAD / "config.json").to_dict()
    info = llm_info(model)
    config = {**shipped, "hidden_size": info["hidden_size"], "llm": info, "training": {"random_init": True}}
    torch.manual_seed(0)
    return ProjectionHead(HeadConfig.from_dict({**config, "metrics": {}})).eval()


def run_one(embedder: NativeEmbedder, messages: list[dict]) -> dict[str, float]:
    model = embedder.model
    encoded = embedder.tokenize(messages)
    ids = torch.tensor([encoded.input_ids])
    out = {"tokens": len(encoded.input_ids)}
    states, out["llm_prefill"] = timed(token_states, model, [encoded.input_ids], embedder.head.config.layers)
    _, out["head"] = timed(embedder.head_vectors, states, [encoded])
    with torch.inference_mode(), embedder.capture() as cap:
        _, out["prefill_with_capture"] = timed(model, input_ids=ids, logits_to_keep=1)
    _, out["capture_head"] = timed(cap.vectors, [encoded])
    _, out["embed_conversation"] = timed(embedder.embed_conversation, messages)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", default="docs/query-cost-qwen.json")
    args = parser.parse_args()

    data = load_data(args.data, max_queries=args.queries)
    teacher = Teacher.from_pretrained()
    embedders = {}
    for name in (DEFAULT_LLM, QWEN_LLM):
        model, tokenizer = load_llm(name)
        head = None if name == DEFAULT_LLM else random_head_like_shipped(model)
        embedders[name] = NativeEmbedder(model, tokenizer, head=head, teacher=teacher)
    samples = {name: {step: [] for step in ("tokens", *STEPS)} for name in embedders}
    teacher_ms = []
    load_start, (busy_start, own_start), wall_start = os.getloadavg(), cpu_seconds(), time.perf_counter()
    queries = data.queries[: args.warmup] + data.queries
    for number, query in enumerate(queries):
        order = list(embedders) if number % 2 == 0 else list(embedders)[::-1]
        results = {name: run_one(embedders[name], query["messages"]) for name in order}
        _, question_ms = timed(teacher.encode, [query["question"]])
        if number < args.warmup:
            continue
        teacher_ms.append(question_ms)
        for name, result in results.items():
            for step, value in result.items():
                samples[name][step].append(value)
    wall = time.perf_counter() - wall_start
    busy_end, own_end = cpu_seconds()
    cores = os.cpu_count() or 1
    others = (busy_end - busy_start) - (own_end - own_start)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores shared with another engineer, CPU",
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()},
        "torch": torch.__version__,
        "dtype": "float32",
        "data": data.name,
        "queries": len(data.queries),
        "warmup": args.warmup,
        "batch_size": 1,
        "load": {
            "loadavg_1m_start": round(load_start[0], 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
            "wall_s": round(wall, 1),
            "this_process_cpu_s": round(own_end - own_start, 1),
            "other_processes_cpu_s": round(others, 1),
            "other_processes_mean_cores": round(others / wall, 2),
        },
        "teacher_question": summary(teacher_ms),
        "llms": {},
    }
    for name, embedder in embedders.items():
        steps = {step: summary(samples[name][step]) for step in STEPS}
        report["llms"][name] = {
            "llm": embedder.head.config.llm["name"],
            "hidden_size": embedder.head.config.hidden_size,
            "layers": int(embedder.model.config.num_hidden_layers),
            "llm_parameter_mb": round(sum(p.numel() * p.element_size() for p in embedder.model.parameters()) / 2**20),
            "head": "shipped (trained)" if name == DEFAULT_LLM else "random init, shipped architecture",
            "head_architecture": embedder.head.config.architecture,
            "head_parameter_mb": round(sum(p.numel() * 4 for p in embedder.head.parameters()) / 2**20, 2),
            "mean_tokens": round(float(np.mean(samples[name]["tokens"])), 1),
            "steps": steps,
        }
    smol, qwen = (report["llms"][name]["steps"] for name in (DEFAULT_LLM, QWEN_LLM))
    report["qwen_over_smollm2_p50"] = {step: round(qwen[step]["p50_ms"] / smol[step]["p50_ms"], 2) for step in STEPS}
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
