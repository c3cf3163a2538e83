"""Exact vs IVF vs HNSW search (``native_retriever.index.VectorIndex``) on synthetic corpora of the teacher's dimension.

The corpus is clustered like real embeddings: unit vectors drawn around ``--clusters`` random centres (a
von-Mises-like cloud), queries drawn the same way but held out. For each corpus size and index kind: build time
(``VectorIndex.add``, IVF training included), the FAISS structure's size (serialized), the resident memory the
process grew by (FAISS plus the id/text records; freed memory is reused, so this undercounts after the first kind),
batch-1 latency and batch QPS of ``VectorIndex.search`` (k=10), and recall@10 against the exact (flat) results, for
a few search settings (IVF ``nprobe``, HNSW ``efSearch``, set on the built index).

    OMP_NUM_THREADS=1 python benchmarks/index_scale.py --sizes 100000 1000000 --output docs/performance.json

The results go under the key ``index_scale`` of the output file (other keys kept; rows of other sizes kept).

Linux only (resident memory read from /proc/self/statm).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from native_retriever.index import VectorIndex


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered(n: int, dim: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors around random centres, built in chunks to bound memory."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        picks = centres[rng.integers(0, len(centres), stop - start)]
        chunk = picks + spread * rng.standard_normal((stop - start, dim), dtype=np.float32) / np.sqrt(dim)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def recall_at(found: list[list], truth: list[list], k: int = 10) -> float:
    return float(np.mean([len({h.id for h in f[:k]} & {h.id for h in t[:k]}) / k for f, t in zip(found, truth)]))


def measure_search(index: VectorIndex, queries: np.ndarray, single: int, k: int = 10) -> tuple[list, dict]:
    start = time.perf_counter()
    hits = index.search(queries, k=k)
    batch_s = time.perf_counter() - start
    latencies = []
    for q in queries[:single]:
        t0 = time.perf_counter()
        index.search(q, k=k)
        latencies.append(1000 * (time.perf_counter() - t0))
    p50, p95 = np.percentile(latencies, [50, 95])
    return hits, {"qps_batch": round(len(queries) / batch_s, 1), "p50_ms": round(p50, 3), "p95_ms": round(p95, 3)}


def run_size(n: int, args, rng: np.random.Generator) -> list[dict]:
    dim = args.dim
    centres = rng.standard_normal((args.clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    corpus = clustered(n, dim, centres, args.spread, rng)
    queries = clustered(args.queries if n < 1_000_000 else args.queries_large, dim, centres, args.spread, rng)
    ids = [f"p{i}" for i in range(n)]
    texts = ids  # records need a text; keep it tiny
    nlist = args.nlist or int(4 * np.sqrt(n))
    settings = {
        "flat": ({}, [{}]),
        "ivf": ({"nlist": nlist}, [{"nprobe": p} for p in (8, 16, 32, 64)]),
        "hnsw": (
            {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction},
            [{"ef_search": e} for e in (32, 64, 128)],
        ),
    }
    rows, truth = [], None
    for kind in args.kinds:
        build, searches = settings[kind]
        gc.collect()
        before = rss_mb()
        index = VectorIndex(dim, kind=kind, use_gpu=False, **build)
        start = time.perf_counter()
        index.add(ids, corpus, texts)
        build_s = time.perf_counter() - start
        memory = rss_mb() - before
        faiss_mb = len(faiss.serialize_index(index._index)) / 2**20  # the FAISS structure alone
        for search in searches:
            if kind == "ivf":
                index.nprobe = search["nprobe"]
                index._apply_search_params(index._index)
            elif kind == "hnsw":
                index.ef_search = search["ef_search"]
                index._apply_search_params(index._index)
            hits, speed = measure_search(index, queries, args.single)
            if kind == "flat":
                truth = hits
            row = {
                "n": n,
                "kind": kind,
                **build,
                **search,
                "build_s": round(build_s, 2),
                "faiss_mb": round(faiss_mb, 1),
                "rss_added_mb": round(memory, 1),
                "vector_mb": round(n * dim * 4 / 2**20, 1),
                "queries": len(queries),
                **speed,
                "recall@10": round(recall_at(hits, truth), 4) if truth is not None else None,
            }
            rows.append(row)
            tqdm.write(json.dumps(row))
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the unit centre")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--queries-large", type=int, default=200, help="queries for corpora of 10^6 and more")
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time (batch 1)")
    parser.add_argument("--nlist", type=int, help="IVF lists (default 4*sqrt(n))")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON file to write")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    rows = []
    for n in tqdm(args.sizes, desc="corpus sizes"):
        rows.extend(run_size(n, args, rng))
    report = {
        "threads": faiss.omp_get_max_threads(),
        "load_average_at_end": os.getloadavg(),
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "rows": rows,
    }
    if args.output:
        write_merged(Path(args.output), report)


def markdown(rows: list[dict]) -> str:
    """One table row per (size, kind, search setting)."""
    lines = [
        "| vectors | kind | setting | build s | FAISS MB | RSS added MB | batch QPS | batch-1 p50 ms | p95 ms "
        "| recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        setting = {
            "ivf": f"nlist {r.get('nlist')}, nprobe {r.get('nprobe')}",
            "hnsw": f"M {r.get('hnsw_m')}, efC {r.get('ef_construction')}, efSearch {r.get('ef_search')}",
        }.get(r["kind"], "exact")
        lines.append(
            f"| {r['n']:,} | {r['kind']} | {setting} | {r['build_s']} | {r['faiss_mb']} | {r['rss_added_mb']} | "
            f"{r['qps_batch']} | {r['p50_ms']} | {r['p95_ms']} | {r['recall@10']} |"
        )
    return "\n".join(lines) + "\n"


def write_merged(path: Path, report: dict) -> None:
    """Store the report under ``index_scale`` in ``path`` (other keys kept), keeping rows of sizes not re-run."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    old = data.get("index_scale", {})
    sizes = {row["n"] for row in report["rows"]}
    kept = [row for row in old.get("rows", []) if row["n"] not in sizes]
    runs = [run for run in old.get("runs", []) if set(run["config"]["sizes"]) - sizes] + [
        {k: v for k, v in report.items() if k != "rows"}
    ]
    order = {"flat": 0, "ivf": 1, "hnsw": 2}
    rows = sorted(kept + report["rows"], key=lambda r: (r["n"], order[r["kind"]]))
    data["index_scale"] = {"runs": runs, "rows": rows}
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
