"""Latency of native retrieval against generate-then-encode, side by side in one process, batch 1.

Default models (SmolLM2-135M-Instruct, the shipped attention-pooling head, all-MiniLM-L6-v2), the coqa-dev corpus
indexed once with the teacher (exact search), conversations of several lengths from coqa-dev. After warm-up turns,
each conversation runs:

- the native turn (``agent.native_turn``): ``llm_prefill`` of the formatted conversation (observed by the capture),
  ``head`` on the captured states, ``search``, ``passages_prefill`` (the tool result appended on the same KV cache)
  and ``answer`` (decoding exactly ``--answer-tokens`` tokens);
- the classic turn (``agent.classic_turn``): ``query_prefill`` (the rewrite prompt) and ``query_generation``
  (the standalone query, greedy, up to 32 tokens), ``teacher`` (encoding that query), ``search``, ``answer_prefill``
  (passages + conversation) and ``answer``;
- the cheap steps again ``--repeats`` times each on the same inputs (head, teacher, search), for stable p50/p95.

Ratios (of p50s, all from this one run):
- ``embedding_step_ratio``: teacher / head;
- ``retrieval_ratio_capture``: (query_prefill + query_generation + teacher + search) / (head + search);
- ``retrieval_ratio_standalone``: the same / (llm_prefill + head + search);
- ``rag_turn_ratio``: classic turn / native turn (both retrieving and decoding ``--answer-tokens`` tokens).

Memory: peak resident memory of a fresh process serving both paths, and of one serving the native path only (the
index loaded from disk, no teacher loaded): over the whole process (loading included) and while serving (the peak
is reset after loading, Linux ``/proc/self/clear_refs``). Also a profile of the head, and costs against batch size.

    OMP_NUM_THREADS=1 python benchmarks/latency.py --data ../shared/data/coqa-dev --output docs/performance.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from native_retriever import NativeEmbedder, VectorIndex
from native_retriever.agent import classic_turn, native_turn, passage_overlap
from native_retriever.data import load_data
from native_retriever.models import cache_dir
from native_retriever.states import pad_token_id

LENGTH_TARGETS = (64, 192, 400)  # formatted conversation tokens: short, medium, long


def summary(samples) -> dict:
    values = np.asarray(samples, dtype=float)
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "n": int(values.size)}


def timed_ms(fn, *args) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, 1000 * (time.perf_counter() - start)


def pick_conversations(embedder, data, per_length: int, warmup: int) -> tuple[list[dict], list[dict]]:
    """``per_length`` judged turns nearest each target length (one per story where possible), plus warm-up turns."""
    lengths = np.array([len(embedder.tokenize(q["messages"]).input_ids) for q in data.queries])
    chosen, used = [], set()
    for target in LENGTH_TARGETS:
        order = np.argsort(np.abs(lengths - target), kind="stable")
        stories: set = set()
        picked = 0
        for i in order:
            query = data.queries[int(i)]
            if int(i) in used or query.get("story_id") in stories:
                continue
            used.add(int(i))
            stories.add(query.get("story_id"))
            chosen.append({**query, "tokens": int(lengths[i]), "bucket": target})
            picked += 1
            if picked == per_length:
                break
    rest = [i for i in range(len(data.queries)) if i not in used][:warmup]
    warm = [{**data.queries[i], "tokens": int(lengths[i]), "bucket": None} for i in rest]
    return chosen, warm


def build_index(embedder, data, folder: Path, vectors_file: str | None = None) -> VectorIndex:
    """The data folder's corpus embedded by the teacher, saved once and reused.

    ``vectors_file``: teacher vectors of the corpus computed before (e.g. the training cache's ``corpus.npy``),
    checked for shape and against the teacher on a sample of passages.
    """
    if (folder / "index.json").is_file():
        return VectorIndex.load(folder)
    texts = [doc["text"] for doc in data.corpus]
    if vectors_file:
        vectors = np.load(vectors_file)
        sample = np.random.default_rng(0).choice(len(texts), size=min(8, len(texts)), replace=False)
        if vectors.shape != (len(texts), embedder.dimension) or not np.allclose(
            vectors[sample], embedder.embed_documents([texts[i] for i in sample]), atol=1e-4
        ):
            raise SystemExit(f"{vectors_file} does not hold this teacher's vectors of {data.name}'s corpus.")
    else:
        vectors = embedder.embed_documents(texts, show_progress=True)
    index = VectorIndex(embedder.dimension, info={"teacher": embedder.teacher.info, "data": data.name})
    index.add([doc["id"] for doc in data.corpus], vectors, texts, None)
    index.save(folder)
    return index


def original_attention_head(head, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The attention head's forward as shipped before the inference path (module calls, masking, einsum)."""
    body = head.body
    position = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    distance = (mask.sum(1, keepdim=True) - 1 - position).clamp(0, body.recency.num_embeddings - 1)
    hidden = body.norm(states)
    logits = (body.score(hidden) + body.recency(distance)).masked_fill(~mask.unsqueeze(-1), float("-inf"))
    weights = torch.softmax(logits, dim=1)
    pooled = torch.einsum("bth,btd->bhd", weights, hidden).flatten(1)
    return torch.nn.functional.normalize(body.proj(body.dropout(pooled)).float(), dim=-1)


def head_before_after(embedder, states_len: int = 192, rounds: int = 300) -> dict:
    """p50 of the shipped head's original forward vs its inference path, interleaved, batch 1 (same outputs)."""
    if embedder.head.config.architecture != "attention":
        return {}
    states = torch.randn(1, states_len, embedder.head.config.hidden_size)
    mask = torch.ones(1, states_len, dtype=torch.bool)
    before, after = [], []
    with torch.inference_mode():
        same = torch.allclose(
            original_attention_head(embedder.head, states, mask), embedder.head(states, mask), atol=1e-5
        )
        for _ in range(rounds):
            before.append(timed_ms(original_attention_head, embedder.head, states, mask)[1])
            after.append(timed_ms(embedder.head, states, mask)[1])
    return {"tokens": states_len, "original_ms": summary(before), "inference_path_ms": summary(after), "same": same}


def head_profile(embedder, states_len: int = 192) -> dict:
    """Where the head's time goes (torch profiler, batch 1): top operators by self CPU time."""
    hidden = embedder.head.config.hidden_size
    states = torch.randn(1, states_len, hidden)
    mask = torch.ones(1, states_len, dtype=torch.bool)
    with torch.inference_mode():
        for _ in range(20):
            embedder.head(states, mask)
        with torch.profiler.profile() as prof:
            for _ in range(200):
                embedder.head(states, mask)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    return {
        "tokens": states_len,
        "calls": 200,
        "operators": [
            {
                "name": e.key,
                "calls_per_head": round(e.count / 200, 2),
                "self_us_per_head": round(e.self_cpu_time_total / 200, 2),
                "share": round(e.self_cpu_time_total / total, 3),
            }
            for e in rows[:8]
        ],
        "parameters": sum(p.numel() for p in embedder.head.parameters()),
        "projection_macs": int(embedder.head.body.proj.weight.numel()) if hasattr(embedder.head.body, "proj") else None,
    }


def batch_scaling(embedder, teacher, conversations: list[dict], sizes: list[int], repeats: int) -> list[dict]:
    """Per-batch cost of the prefill with capture + head and of the teacher, for several batch sizes."""
    model, tokenizer = embedder.model, embedder.tokenizer
    out = []
    for size in sizes:
        chunk = [c["messages"] for c in conversations[:size]]
        if len(chunk) < size:
            break
        encoded = [embedder.tokenize(m) for m in chunk]
        longest = max(len(e.input_ids) for e in encoded)
        pad = pad_token_id(tokenizer)
        ids = torch.tensor([[pad] * (longest - len(e.input_ids)) + e.input_ids for e in encoded])
        mask = torch.tensor([[0] * (longest - len(e.input_ids)) + [1] * len(e.input_ids) for e in encoded])
        prefill, head, teach = [], [], []
        for _ in range(repeats):
            with torch.inference_mode(), embedder.capture() as cap:
                start = time.perf_counter()
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
            prefill.append(1000 * (time.perf_counter() - start))
            head.append(timed_ms(cap.vectors, encoded)[1])
            teach.append(timed_ms(teacher.encode, [c["question"] for c in conversations[:size]])[1])
        out.append(
            {
                "batch_size": size,
                "padded_tokens": int(ids.numel()),
                "prefill_with_capture_ms": summary(prefill)["p50_ms"],
                "head_ms": summary(head)["p50_ms"],
                "head_ms_per_conversation": round(summary(head)["p50_ms"] / size, 4),
                "teacher_ms": summary(teach)["p50_ms"],
                "teacher_ms_per_query": round(summary(teach)["p50_ms"] / size, 3),
            }
        )
    return out


def memory_probe(mode: str, data_dir: str, index_dir: str, turns: int) -> dict:
    """Run in a fresh process: serve ``turns`` RAG turns on the native path (``native``) or both paths (``both``)."""
    data = load_data(data_dir, max_queries=turns)
    embedder = NativeEmbedder.from_pretrained()  # the teacher loads lazily: only ``both`` touches it
    index = VectorIndex.load(index_dir)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM): measure serving, not loading
    for query in data.queries[:turns]:
        native_turn(embedder, index, query["messages"], k=3, max_new_tokens=4, min_new_tokens=4)
        if mode == "both":
            classic_turn(embedder.model, embedder.tokenizer, embedder.teacher, index, query["messages"], 3, 4, 4)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = lambda key: int(status[key].split()[0]) / 1024  # noqa: E731
    return {
        "mode": mode,
        "peak_rss_mb_whole_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_serving": round(kb("VmHWM"), 1),
        "rss_after_serving_mb": round(kb("VmRSS"), 1),
        "teacher_loaded": "sentence_transformers" in sys.modules,
    }


def run_probe(mode: str, data_dir: str, index_dir: Path, turns: int) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-probe",
        mode,
        "--data",
        data_dir,
        "--index",
        str(index_dir),
    ]
    command += ["--probe-turns", str(turns)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {mode} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/coqa-dev")
    parser.add_argument("--output", help="JSON file to write (e.g. docs/performance.json)")
    parser.add_argument("--per-length", type=int, default=6, help="conversations per length bucket")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up turns (not timed)")
    parser.add_argument("--repeats", type=int, default=20, help="repetitions of the cheap steps per conversation")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("-k", type=int, default=3, help="passages retrieved per turn")
    parser.add_argument("--extra-k", type=int, nargs="*", default=[], help="also time whole turns with these k")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--index", help="index folder (default: built once under the cache folder)")
    parser.add_argument("--corpus-vectors", help="teacher vectors of the corpus (.npy) to build the index from")
    parser.add_argument("--probe-turns", type=int, default=2)
    parser.add_argument("--memory-probe", choices=["native", "both"], help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--plot", help="PNG file for the plot (e.g. docs/performance.png)")
    parser.add_argument("--markdown", help="write the result tables as Markdown to this file")
    args = parser.parse_args(argv)

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.data, args.index, args.probe_turns)))
        return None

    started = time.time()
    data = load_data(args.data)
    embedder = NativeEmbedder.from_pretrained()
    model, tokenizer, teacher = embedder.model, embedder.tokenizer, embedder.teacher
    index_dir = Path(args.index) if args.index else cache_dir() / "bench" / f"{data.name}-index"
    index = build_index(embedder, data, index_dir, args.corpus_vectors)
    conversations, warm = pick_conversations(embedder, data, args.per_length, args.warmup)

    steps: dict[str, list[float]] = {}
    per_turn = []
    rounds = [(q, False) for q in warm] + [(q, True) for q in conversations]
    for query, keep in tqdm(rounds, desc="RAG turns"):
        messages = query["messages"]
        native = native_turn(embedder, index, messages, args.k, args.answer_tokens, args.answer_tokens)
        classic = classic_turn(
            model, tokenizer, teacher, index, messages, args.k, args.answer_tokens, args.answer_tokens
        )
        extra = {}
        for k in args.extra_k:
            a = native_turn(embedder, index, messages, k, args.answer_tokens, args.answer_tokens)
            b = classic_turn(model, tokenizer, teacher, index, messages, k, args.answer_tokens, args.answer_tokens)
            extra[k] = {"native_turn_ms": sum(a.timings.values()), "classic_turn_ms": sum(b.timings.values())}
        # the cheap steps again on the same inputs
        encoded = embedder.tokenize(messages)
        with torch.inference_mode(), embedder.capture() as cap:
            model(input_ids=torch.tensor([encoded.input_ids]), logits_to_keep=1)
        heads = [timed_ms(cap.vectors, [encoded])[1] for _ in range(args.repeats)]
        teachers = [timed_ms(teacher.encode, [classic.query])[1] for _ in range(args.repeats)]
        searches = [timed_ms(index.search, native.vector, args.k)[1] for _ in range(args.repeats)]
        if not keep:
            continue
        n, c = native.timings, classic.timings
        for name, value in n.items():
            steps.setdefault("native_" + name, []).append(value)
        for name, value in c.items():
            steps.setdefault("classic_" + name, []).append(value)
        steps.setdefault("head", []).extend([n["head"], *heads])
        steps.setdefault("teacher", []).extend([c["teacher"], *teachers])
        steps.setdefault("search", []).extend([n["search"], c["search"], *searches])
        steps.setdefault("llm_prefill", []).append(n["prefill"])
        gte = c["query_prefill"] + c["query_generation"] + c["teacher"] + c["search"]
        per_turn.append(
            {
                "id": query["id"],
                "bucket": query["bucket"],
                "tokens": query["tokens"],
                "query": classic.query,
                "query_tokens": len(tokenizer(classic.query, add_special_tokens=False)["input_ids"]),
                "overlap": passage_overlap(native.hits, classic.hits),
                "gte_retrieval_ms": gte,
                "native_capture_ms": n["head"] + n["search"],
                "native_standalone_ms": n["prefill"] + n["head"] + n["search"],
                "classic_turn_ms": sum(c.values()),
                "native_turn_ms": sum(n.values()),
                "native_passage_tokens": len(native.prompt_ids) - query["tokens"],
                "classic_prompt_tokens": len(classic.prompt_ids),
                "steps": {"native": n, "classic": c},
                "other_k": extra,
            }
        )

    p50 = {name: summary(values) for name, values in sorted(steps.items())}
    med = lambda name: p50[name]["p50_ms"]  # noqa: E731
    totals = {
        key: summary([t[key] for t in per_turn])
        for key in (
            "gte_retrieval_ms",
            "native_capture_ms",
            "native_standalone_ms",
            "classic_turn_ms",
            "native_turn_ms",
        )
    }
    gte = med("classic_query_prefill") + med("classic_query_generation") + med("teacher") + med("search")
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(),
        },
        "models": {
            "llm": embedder.head.config.llm.get("name"),
            "head": embedder.head.config.architecture,
            "teacher": teacher.name,
        },
        "data": data.name,
        "corpus_passages": len(index),
        "conversations": len(per_turn),
        "length_buckets": list(LENGTH_TARGETS),
        "batch_size": 1,
        "k": args.k,
        "answer_tokens": args.answer_tokens,
        "repeats": args.repeats,
        "steps": p50,
        "totals": totals,
        # ratios of p50s of the steps (each step's p50 over all its samples)
        "embedding_step_ratio": ratio(med("teacher"), med("head")),
        "retrieval_ratio_capture": ratio(gte, med("head") + med("search")),
        "retrieval_ratio_standalone": ratio(gte, med("llm_prefill") + med("head") + med("search")),
        "rag_turn_ratio": ratio(totals["classic_turn_ms"]["p50_ms"], totals["native_turn_ms"]["p50_ms"]),
        "gte_retrieval_p50_ms": round(gte, 3),
        "rag_turn_ratio_other_k": {
            str(k): ratio(
                float(np.median([t["other_k"][k]["classic_turn_ms"] for t in per_turn])),
                float(np.median([t["other_k"][k]["native_turn_ms"] for t in per_turn])),
            )
            for k in args.extra_k
        },
        "in_turn_embedding_step_ratio": ratio(med("classic_teacher"), med("native_head")),
        "rag_turn_ratio_estimate_by_answer_tokens": answer_token_model(steps, args.answer_tokens),
        "passage_overlap_mean": round(float(np.mean([t["overlap"] for t in per_turn])), 3),
        "by_length": by_length(per_turn),
        "head_profile": head_profile(embedder),
        "head_before_after": head_before_after(embedder),
        "batch_scaling": batch_scaling(embedder, teacher, conversations, args.batch_sizes, repeats=3),
        "turns": per_turn,
    }
    if not args.no_memory:
        report["memory"] = {
            "native_only": run_probe("native", args.data, index_dir, args.probe_turns),
            "both_paths": run_probe("both", args.data, index_dir, args.probe_turns),
            "note": "fresh processes; each ran native (and classic) turns on the saved index",
        }
    report["seconds"] = round(time.time() - started, 1)
    report["load_average_at_end"] = os.getloadavg()
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.is_file():  # keep the index-scale results (benchmarks/index_scale.py) written beside
            previous = json.loads(output.read_text())
            report.update({k: v for k, v in previous.items() if k.startswith("index_scale")})
        output.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, args.plot)
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
    keys = ("embedding_step_ratio", "retrieval_ratio_capture", "retrieval_ratio_standalone", "rag_turn_ratio")
    print(json.dumps({k: report[k] for k in keys} | {"steps": {k: v["p50_ms"] for k, v in p50.items()}}, indent=2))
    return report


def answer_token_model(steps: dict[str, list[float]], answer_tokens: int) -> dict[str, float]:
    """Classic / native turn for other answer lengths, estimated from this run's per-step p50s (decode cost per
    token = the answer step's p50 / ``answer_tokens``)."""
    med = {name: float(np.median(values)) for name, values in steps.items()}
    sides = {}
    for side in ("classic", "native"):
        fixed = sum(v for k, v in med.items() if k.startswith(side + "_") and k != f"{side}_answer")
        sides[side] = (fixed, med[f"{side}_answer"] / answer_tokens)
    (c_fixed, c_tok), (n_fixed, n_tok) = sides["classic"], sides["native"]
    return {str(a): ratio(c_fixed + a * c_tok, n_fixed + a * n_tok) for a in (0, 8, 32, 128)}


def markdown(report: dict) -> str:
    """The tables of docs/performance.md."""
    steps = report["steps"]
    lines = ["| step | p50 ms | p95 ms | samples |", "|---|---|---|---|"]
    for name, value in steps.items():
        lines.append(f"| {name} | {value['p50_ms']:.3f} | {value['p95_ms']:.3f} | {value['n']} |")
    lines += ["", "| total per conversation | p50 ms | p95 ms |", "|---|---|---|"]
    for name, value in report["totals"].items():
        lines.append(f"| {name} | {value['p50_ms']:.1f} | {value['p95_ms']:.1f} |")
    rows = report["by_length"]
    if rows:
        lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    scaling = report["batch_scaling"]
    if scaling:
        lines += ["", "| " + " | ".join(scaling[0]) + " |", "|" + "---|" * len(scaling[0])]
        lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in scaling]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    """Left: p50 of each step, both paths (log scale). Right: retrieval and whole-turn cost against length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    steps = report["steps"]
    names = [
        ("classic_query_prefill", "g-t-e: rewrite prefill"),
        ("classic_query_generation", "g-t-e: query generation"),
        ("teacher", "g-t-e: teacher encode"),
        ("llm_prefill", "native: conversation prefill"),
        ("head", "native: head (capture)"),
        ("search", "index search (both)"),
        ("native_passages_prefill", "native: passages on the cache"),
        ("classic_answer_prefill", "classic: answer prompt prefill"),
        ("native_answer", f"answer decode, {report['answer_tokens']} tokens (both)"),
    ]
    names = [(key, label) for key, label in names if key in steps]
    colours = [
        "#c44e52" if label.startswith(("g-t-e", "classic")) else "#4c72b0" if label.startswith("native") else "#8c8c8c"
        for _, label in names
    ]
    left.barh([label for _, label in names], [steps[key]["p50_ms"] for key, _ in names], color=colours)
    left.set_xscale("log")
    left.invert_yaxis()
    left.set_xlabel("p50 latency, ms (log scale)")
    left.set_title(
        f"embedding step {report['embedding_step_ratio']}x, retrieval {report['retrieval_ratio_capture']}x "
        f"(capture) / {report['retrieval_ratio_standalone']}x (standalone)",
        fontsize=9,
    )
    rows = report["by_length"]
    tokens = [r["tokens_p50"] for r in rows]
    for key, label, style in (
        ("gte_retrieval_ms", "retrieval: generate-then-encode", "o-"),
        ("native_standalone_ms", "retrieval: native standalone (prefill + head)", "s-"),
        ("classic_turn_ms", "RAG turn: classic", "o--"),
        ("native_turn_ms", "RAG turn: native (one prefill)", "s--"),
    ):
        right.plot(tokens, [r[key] / 1000 for r in rows], style, label=label)
    right.set_xlabel("conversation length (formatted tokens, p50 of the bucket)")
    right.set_ylabel("p50 seconds")
    right.set_title(f"RAG turn classic / native: {report['rag_turn_ratio']}x", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def by_length(per_turn: list[dict]) -> list[dict]:
    """Cost against conversation length: p50 per bucket."""
    rows = []
    for bucket in sorted({t["bucket"] for t in per_turn}):
        turns = [t for t in per_turn if t["bucket"] == bucket]

        def med(key: str, turns: list[dict] = turns) -> float:
            return float(np.median([t[key] for t in turns]))

        def step(side: str, name: str, turns: list[dict] = turns) -> float:
            return float(np.median([t["steps"][side][name] for t in turns]))

        rows.append(
            {
                "target_tokens": bucket,
                "conversations": len(turns),
                "tokens_p50": med("tokens"),
                "llm_prefill_ms": round(step("native", "prefill"), 1),
                "head_ms": round(step("native", "head"), 3),
                "gte_retrieval_ms": round(med("gte_retrieval_ms"), 1),
                "native_standalone_ms": round(med("native_standalone_ms"), 1),
                "classic_turn_ms": round(med("classic_turn_ms"), 1),
                "native_turn_ms": round(med("native_turn_ms"), 1),
                "rag_turn_ratio": round(med("classic_turn_ms") / med("native_turn_ms"), 2),
                "overlap": round(float(np.mean([t["overlap"] for t in turns])), 3),
            }
        )
    return rows


if __name__ == "__main__":
    main()
