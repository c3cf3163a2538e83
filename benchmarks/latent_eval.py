"""Evaluate latent-view adapters (ablation, K sweep, batch-1 latency) on a coqa-dev subset, beside the baselines.

    OMP_NUM_THREADS=1 python benchmarks/latent_eval.py --runs runs/latent --data ../shared/data/coqa-dev \
        --output docs/latent-results.json [--only STAGE...] [--baselines SYSTEM...]

The subset (a CPU budget): the passages of the first ``--corpus-stories`` CoQA stories of coqa-dev (in the
queries file's order; no SQuAD distractors) and every judged turn of the first ``--query-stories`` of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from native_retriever.data import RetrievalData, load_data
from native_retriever.evaluation import evaluate_systems, retrieval_metrics, top_k_run
from native_retriever.latent import LatentEmbedder
from native_retriever.latent.encoder import pool
from native_retriever.latent.training import LOSSES
from native_retriever.models import load_llm

ABLATION = {  # run folder -> what it is (see benchmarks/latent_ablation.sh): LoRA on all layers, 160 queries
    "full": "full method (K=3; output KL and trajectory alignment at weight 1)",
    "full-design": "full method with the default weights (output KL 10, trajectory 0.1)",
    "no-explicit": "without the explicit view (latent InfoNCE only, K=3)",
    "no-trajectory": "without trajectory alignment",
    "no-distill": "without output distillation",
    "k1": "K=1 (no latent tokens), all losses",
    "contrastive": "contrastive only (K=1, latent InfoNCE: the paper's fair baseline)",
    "full-closed": "full method, explicit view in the closed layout",
    "full-closed-design": "full method, closed layout, the default weights (output KL 10, trajectory 0.1)",
    "no-trajectory-closed": "without trajectory alignment, closed layout",
    "no-distill-closed": "without output distillation, closed layout",
    "k1-closed": "K=1 (no latent tokens), all losses, closed layout",
    "full-n80": "full method (closed layout), 80 training queries (20 steps)",
    "contrastive-n80": "contrastive only, 80 training queries (20 steps)",
    "full-n320": "full method (closed layout), 320 training queries (80 steps)",
    "contrastive-n320": "contrastive only, 320 training queries (80 steps)",
}
TOP8 = {  # the earlier runs in RUNS/top8: LoRA on the top 8 of 30 layers, the default weights, 40 queries unless named
    "full": "full method (K=3)",
    "no-explicit": "without the explicit view (latent InfoNCE only, K=3)",
    "no-trajectory": "without trajectory alignment",
    "no-distill": "without output distillation",
    "k1": "K=1 (no latent tokens), all losses",
    "contrastive": "contrastive only (K=1, latent InfoNCE: the paper's fair baseline)",
    "full-n20": "full method, 20 training queries",
    "full-n80": "full method, 80 training queries",
    "full-distill1": "full method, output KL weight 1 instead of 10",
    "full-n160": "full method, 160 training queries",
    "full-d1t1-n160": "full method, 160 training queries, output KL and trajectory alignment at weight 1",
    "contrastive-n160": "contrastive only (K=1), 160 training queries",
}


def coqa_subset(folder: str, corpus_stories: int, query_stories: int) -> RetrievalData:
    data = load_data(folder)
    stories: list[str] = []
    for q in data.queries:
        if q["story_id"] not in stories:
            stories.append(q["story_id"])
    keep, ask = set(stories[:corpus_stories]), set(stories[:query_stories])
    corpus = [d for d in data.corpus if d["id"].split("#")[0] in keep]
    queries = [q for q in data.queries if q["story_id"] in ask]
    qrels = {q["id"]: data.qrels[q["id"]] for q in queries}
    return RetrievalData(f"{data.name}-subset", corpus, queries, qrels)


def p50_ms(systems: dict, items: list, warmup: int = 2) -> dict:
    """Batch-1 p50 milliseconds of each system, interleaved item by item so load changes hit all alike."""
    times: dict = {name: [] for name in systems}
    for position, item in enumerate(items[:warmup] + items):
        for name, fn in systems.items():
            start = time.perf_counter()
            fn(item)
            if position >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


def adapter_row(folder: Path, data: RetrievalData) -> dict:
    config = json.loads((folder / "latent_config.json").read_text())
    model, tokenizer = load_llm()
    embedder = LatentEmbedder(model, tokenizer, folder)
    started = time.time()
    metrics = evaluate_systems(data, ["latent"], latent_embedders={"latent": embedder})["systems"]["latent"]
    training = config["training"]
    return metrics | {
        "k": config["k"],
        "train_examples": training.get("examples"),
        "train_steps": training.get("optimizer_steps"),
        "train_seconds": training.get("seconds"),
        "eval_seconds": round(time.time() - started, 1),
        "weights": {k: training["config"][f"{k}_weight"] for k in LOSSES} if "config" in training else None,
    }


@torch.inference_mode()
def all_steps(embedder: LatentEmbedder, sequences: list[list[int]], k: int, batch_size: int = 8) -> torch.Tensor:
    """(N, k, H) latent-step states; the first K of k steps are exactly the K-step trajectory."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = torch.zeros((len(sequences), k, embedder.dimension))
    with embedder.encoder.adapter_active():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = embedder.encoder.states([sequences[i] for i in rows], k).float()
    return out


def k_sweep(folder: Path, data: RetrievalData, k_max: int = 6, latency_queries: int = 12) -> list[dict]:
    model, tokenizer = load_llm()
    embedder = LatentEmbedder(model, tokenizer, folder)
    encoder = embedder.encoder
    docs = all_steps(embedder, [encoder.document_ids(d["text"]) for d in data.corpus], k_max)
    queries = all_steps(embedder, [encoder.conversation_ids(q["messages"]) for q in data.queries], k_max)
    qids = [q["id"] for q in data.queries]
    sample = [q["messages"] for q in data.queries[:latency_queries]]
    systems = {k: LatentEmbedder(model, tokenizer, encoder, k=k).embed_conversation for k in range(1, k_max + 1)}
    latencies = p50_ms(systems, sample)
    rows = []
    for k in range(1, k_max + 1):
        run = top_k_run(qids, data.doc_ids, pool(queries[:, :k]).numpy(), pool(docs[:, :k]).numpy())
        rows.append({"k": k, **retrieval_metrics(data.qrels, run), "query_p50_ms": latencies[k]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


@torch.inference_mode()
def explicit_row(folder: Path, data: RetrievalData) -> dict:
    """Retrieval quality of an adapter's explicit view against its latent documents: how good the teacher of the
    output KL is, in both layouts of ``train-latent --explicit-layout`` (``reply``: the conversation, then the
    data's rationale as the start of the reply, embedding at its last token; ``closed``: that reply closed and
    followed by a new generation prompt, embedding at its last token)."""
    from native_retriever.latent.training import (
        EXPLICIT_LAYOUTS,
        Example,
        ExplicitInputs,
        explicit_view,
        rationale_text,
    )

    config = json.loads((folder / "latent_config.json").read_text())
    model, tokenizer = load_llm()
    embedder = LatentEmbedder(model, tokenizer, folder)
    encoder = embedder.encoder
    window = config["training"].get("config", {}).get("max_rationale_tokens", 256)
    layouts = {name: ExplicitInputs(tokenizer, encoder.prompt_format, window, name) for name in EXPLICIT_LAYOUTS}
    docs = embedder.embed_documents([d["text"] for d in data.corpus])
    row: dict = {"adapter": folder.name}
    with encoder.adapter_active():
        for layout, inputs in layouts.items():
            queries = [
                explicit_view(encoder, [inputs(Example(q["id"], q["messages"], rationale_text(q), []))], 1)[0][0]
                for q in data.queries
            ]
            run = top_k_run([q["id"] for q in data.queries], data.doc_ids, torch.stack(queries).numpy(), docs)
            row[layout] = retrieval_metrics(data.qrels, run)
    return row


def untrained_adapter(like: Path, folder: Path) -> None:
    """An identity adapter (LoRA B = 0) with the same settings as ``like``: the base LLM in the latent view."""
    from native_retriever.latent import LatentConfig, LatentEncoder

    config = LatentConfig.from_dict(json.loads((like / "latent_config.json").read_text()))
    config.training, config.metrics = {"examples": 0, "note": "untrained: LoRA B is zero"}, {}
    model, tokenizer = load_llm()
    LatentEncoder.create(model, tokenizer, config).save_pretrained(folder)


def plot_k_sweep(sweeps: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (quality, cost) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, rows in sweeps.items():
        ks = [r["k"] for r in rows]
        quality.plot(ks, [r["recall@10"] for r in rows], marker="o", label=f"{name} R@10")
        quality.plot(ks, [r["mrr@10"] for r in rows], marker="s", linestyle="--", label=f"{name} MRR@10")
        cost.plot(ks, [r["query_p50_ms"] for r in rows], marker="o", label=name)
    quality.set_xlabel("K at inference")
    quality.legend(fontsize=7)
    cost.set_xlabel("K at inference")
    cost.set_ylabel("query p50 ms, batch 1")
    cost.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def latency(folder: Path, data: RetrievalData, n: int = 20) -> dict:
    from native_retriever.embedder import NativeEmbedder
    from native_retriever.teacher import Teacher

    sample = data.queries[:n]
    teacher = Teacher.from_pretrained()
    native = NativeEmbedder(*load_llm(), teacher=teacher)
    model, tokenizer = load_llm()
    latent = LatentEmbedder(model, tokenizer, folder)
    queries = p50_ms(
        {
            f"latent (K={latent.k})": lambda q: latent.embed_conversation(q["messages"]),
            "native-context": lambda q: native.embed_conversation(q["messages"]),
            "teacher-question": lambda q: teacher.encode([q["question"]], show_progress=False),
        },
        sample,
    )
    documents = p50_ms(
        {
            "latent document": lambda d: latent.embed_documents([d["text"]]),
            "teacher document": lambda d: teacher.encode([d["text"]], show_progress=False),
        },
        data.corpus[:n],
    )
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    return {"queries": n, **queries, **documents, "lora_parameters": lora}


def baselines(data: RetrievalData, systems: list[str]) -> dict:
    from native_retriever.embedder import NativeEmbedder
    from native_retriever.teacher import Teacher

    teacher = Teacher.from_pretrained()
    llm = load_llm()
    report = evaluate_systems(
        data, systems, llm=llm, context_embedder=NativeEmbedder(*llm, teacher=teacher), teacher=teacher
    )
    return report["systems"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="runs/latent")
    parser.add_argument("--data", default="../shared/data/coqa-dev")
    parser.add_argument("--output", default="docs/latent-results.json")
    parser.add_argument("--corpus-stories", type=int, default=16)
    parser.add_argument("--query-stories", type=int, default=4)
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=["bm25-question", "teacher-question", "teacher-history", "native-context", "generate-then-encode"],
        help="eval systems to (re)run on the subset (generate-then-encode is slow)",
    )
    parser.add_argument("--k-sweep-runs", nargs="+", default=["full-closed", "full", "contrastive", "untrained"])
    explicit_runs = ["full", "full-design", "full-closed", "full-closed-design", "contrastive", "untrained"]
    parser.add_argument("--explicit-runs", nargs="+", default=explicit_runs)
    parser.add_argument("--only", nargs="*", help="stages: ablation top8 ksweep explicit latency baselines")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = coqa_subset(args.data, args.corpus_stories, args.query_stories)
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.is_file() else {}
    results["subset"] = {
        "data": args.data,
        "corpus": f"CoQA passages of the first {args.corpus_stories} stories (queries-file order), no SQuAD",
        "queries": f"every judged turn of the first {args.query_stories} stories",
        "passages": len(data.corpus),
        "judged_queries": len(data.queries),
    }
    print(json.dumps(results["subset"]))
    stages = args.only or ["ablation", "top8", "ksweep", "explicit", "latency", "baselines"]
    runs = Path(args.runs)

    def save() -> None:
        output.write_text(json.dumps(results, indent=2) + "\n")

    for stage, folder, labels in (("ablation", runs, ABLATION), ("top8", runs / "top8", TOP8)):
        if stage not in stages:
            continue
        rows = results.setdefault(stage, {})
        for name, label in labels.items():
            if (folder / name / "latent_config.json").is_file() and name not in rows:
                rows[name] = {"label": label, **adapter_row(folder / name, data)}
                print(stage, name, json.dumps(rows[name]), flush=True)
                save()
    if "ksweep" in stages and (runs / "full" / "latent_config.json").is_file():
        if not (runs / "untrained" / "latent_config.json").is_file():
            untrained_adapter(runs / "full", runs / "untrained")
        results["k_sweep"] = results.get("k_sweep", {}) | {
            name: k_sweep(runs / name, data) for name in args.k_sweep_runs
        }
        plot_k_sweep(results["k_sweep"], output.with_name("latent-k-sweep.png"))
        save()
    if "explicit" in stages:
        results["explicit_view"] = [explicit_row(runs / name, data) for name in args.explicit_runs]
        print(json.dumps(results["explicit_view"]))
        save()
    if "latency" in stages and (runs / "full" / "latent_config.json").is_file():
        results["latency_p50_ms_batch1"] = latency(runs / "full", data)
        print(json.dumps(results["latency_p50_ms_batch1"]))
        save()
    if "baselines" in stages:
        results["baselines"] = results.get("baselines", {}) | baselines(data, args.baselines)
        print(json.dumps(results["baselines"]))
        save()


if __name__ == "__main__":
    main()
