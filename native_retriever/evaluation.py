"""Retrieval metrics (ranx), exact top-k runs from score matrices, saved runs and paired significance tests."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import DataFormatError, InvalidArgumentError
from .extras import require
from .generation import generate_queries
from .teacher import corpus_vectors

METRICS = ("recall@10", "mrr@10", "ndcg@10")


@contextmanager
def quiet_ranx() -> Iterator[None]:
    """A block in which numba's NumbaTypeSafetyWarning (printed while ranx's metrics compile) is not shown."""
    with warnings.catch_warnings():
        try:
            from numba.core.errors import NumbaTypeSafetyWarning
        except ImportError:  # another numba, or none: nothing to hide
            pass
        else:
            warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        yield


def top_k_run(
    query_ids: Sequence[str], doc_ids: Sequence[str], queries: np.ndarray, docs: np.ndarray, k: int = 10
) -> dict[str, dict[str, float]]:
    """Exact inner-product top-k of each query vector over the document vectors, as a ranx-style run."""
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), 1024):
        scores = queries[start : start + 1024] @ docs.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for row, columns in enumerate(top):
            run[query_ids[start + row]] = {doc_ids[c]: float(scores[row, c]) for c in columns}
    return run


def retrieval_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Recall@10, MRR@10 and nDCG@10 over the judged queries (ranx); a query missing from the run scores 0."""
    require("eval", "ranx", what="Scoring runs")
    from ranx import Qrels, Run, evaluate

    run = {qid: run.get(qid) or {"__none__": 0.0} for qid in qrels}
    with quiet_ranx():
        scores = evaluate(Qrels(qrels), Run(run), list(METRICS), make_comparable=True)
    return {name: round(float(scores[name]), 4) for name in METRICS} | {"queries": len(qrels)}


STAT_TESTS = ("student", "fisher", "tukey")  # ranx: paired t-test, Fisher's randomization test, Tukey's HSD


def save_run(run: dict[str, dict[str, float]], path: str | os.PathLike, name: str) -> None:
    """Write a run as a TREC run file (``qid Q0 docid rank score name``), readable by ranx and trec_eval."""
    require("eval", "ranx", what="Saving runs")
    from ranx import Run

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with quiet_ranx():
        Run(run, name=name).save(str(path), kind="trec")


def compare_runs(
    qrels: dict[str, dict[str, int]],
    paths: Sequence[str | os.PathLike],
    *,
    stat_test: str = "student",
    max_p: float = 0.05,
    permutations: int = 10_000,
):
    """Paired significance tests (ranx ``compare``) of saved TREC runs on the same judged queries.

    A run is named after its file (``latent.trec`` -> ``latent``), or ``folder/latent`` when two files share a name.
    A query missing from a run scores 0. ``permutations``: of Fisher's test, whose p-value is a Monte Carlo estimate
    (standard error about 0.003 at p = 0.1 with 10,000). Returns ranx's Report (``to_dict()``, ``to_table()``).
    """
    require("eval", "ranx", what="Comparing runs")
    from ranx import Qrels, Run, compare

    if stat_test not in STAT_TESTS:
        raise InvalidArgumentError(f"Unknown test {stat_test!r}; choose from {', '.join(STAT_TESTS)}.")
    if permutations < 1 or not 0 < max_p < 1:
        raise InvalidArgumentError(f"Need permutations >= 1 and 0 < max_p < 1, got {permutations} and {max_p}.")
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise DataFormatError("Comparing needs at least two run files (write them with `eval --save-runs DIR`).")
    stems = [p.stem for p in paths]
    names = [p.stem if stems.count(p.stem) == 1 else f"{p.parent.name}/{p.stem}" for p in paths]
    if len(set(names)) < len(names):
        raise DataFormatError(f"Run names {names} are not unique; give the files distinct names or folders.")
    runs = []
    for path, name in zip(paths, names):
        problem = "does not exist" if not path.is_file() else "is empty" if path.stat().st_size == 0 else None
        if problem:
            raise DataFormatError(
                f"Run file {path} {problem}; write runs with `native-retriever eval --save-runs DIR`."
            )
        try:
            with quiet_ranx():
                run = Run.from_file(str(path), kind="trec", name=name)
        except (ValueError, IndexError) as exc:
            raise DataFormatError(
                f"Run file {path} is not a TREC run file (one 'qid Q0 docid rank score tag' per line, as "
                f"`native-retriever eval --save-runs DIR` writes): {exc}"
            ) from exc
        runs.append(run)
    with quiet_ranx(), warnings.catch_warnings():  # scipy warns when two runs score the same on every query
        warnings.simplefilter("ignore", RuntimeWarning)
        return compare(
            Qrels(qrels),
            runs,
            list(METRICS),
            stat_test=stat_test,
            n_permutations=permutations,
            max_p=max_p,
            make_comparable=True,
            rounding_digits=4,
        )


def comparison_dict(report) -> dict:
    """ranx's Report as plain JSON values: p-values as floats, ``None`` where a test is undefined (equal scores)."""

    def plain(value):
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, float | np.floating):
            return None if np.isnan(value) else float(value)
        return value

    return plain(report.to_dict())


SYSTEMS = (
    "bm25-question",
    "teacher-question",
    "teacher-history",
    "generate-then-encode",
    "native-context",
    "native-query",
    "latent",
    "latent-contrastive",
)
LATENT_SYSTEMS = ("latent", "latent-contrastive")  # documents indexed by the latent encoder itself


def needs_teacher(systems: Sequence[str]) -> bool:
    """Whether any of ``systems`` searches the teacher's corpus vectors (BM25 and the latent systems do not)."""
    return any(s != "bm25-question" and s not in LATENT_SYSTEMS for s in systems)


def bm25_run(data, k: int = 10) -> dict[str, dict[str, float]]:
    """BM25 (bm25s, English stop words) of the current question alone."""
    require("eval", "bm25s", what="BM25")
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([d["text"] for d in data.corpus], stopwords="en", show_progress=False), show_progress=False
    )
    tokens = bm25s.tokenize([q["question"] for q in data.queries], stopwords="en", show_progress=False)
    docs, scores = retriever.retrieve(tokens, k=min(k, len(data.corpus)), show_progress=False)
    return {
        q["id"]: {data.corpus[int(d)]["id"]: float(s) for d, s in zip(docs[row], scores[row])}
        for row, q in enumerate(data.queries)
    }


def evaluate_systems(
    data,
    systems: Sequence[str] = SYSTEMS,
    *,
    llm=None,
    context_embedder=None,
    query_embedder=None,
    teacher=None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    generated_queries: dict[str, str] | None = None,
    latent_embedders: dict | None = None,
    save_runs: str | os.PathLike | None = None,
    corpus_cache: str | os.PathLike | None = None,
) -> dict:
    """Score each named system on ``data`` (a RetrievalData) over the same corpus and queries.

    ``llm``: ``(model, tokenizer)`` of the agent LLM that writes queries for ``generate-then-encode`` (the teacher
    encodes them); ``context_embedder`` / ``query_embedder``: NativeEmbedders with a ``context`` / ``query`` head on
    the same LLM.
    ``generated_queries`` (query id -> text) holds queries written earlier; missing ones are generated and added.
    ``latent_embedders``: system name (``latent``, ``latent-contrastive``) -> LatentEmbedder; that system embeds the
    corpus and the conversations itself.
    ``save_runs``: a folder to write each system's top-10 run into as ``<system>.trec`` (for ``compare_runs``).
    ``corpus_cache``: where the teacher's corpus vectors are cached by content (default
    ``$NATIVE_RETRIEVER_HOME/corpus-vectors``, see :func:`native_retriever.teacher.corpus_vectors`).
    """
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise InvalidArgumentError(f"Unknown systems {unknown}; choose from {', '.join(SYSTEMS)}.")
    require("eval", "ranx", *(["bm25s"] if "bm25-question" in systems else []), what="Evaluation")
    if not data.queries:
        raise DataFormatError(
            f"Data {data.name!r} has no judged queries to score; load it with load_data(folder, require_judged=True) "
            "to see why, and add qrels.tsv lines for its queries (docs/data-format.md)."
        )
    qids = [q["id"] for q in data.queries]
    results: dict[str, dict] = {}
    generated: list[str] | None = None
    known = generated_queries if generated_queries is not None else {}
    corpus = None  # the teacher's corpus vectors, only when a requested system searches them
    if teacher is not None and needs_teacher(systems):
        corpus = corpus_vectors(teacher, [d["text"] for d in data.corpus], corpus_cache, show_progress=True)

    def record(name: str, run: dict[str, dict[str, float]]) -> None:
        results[name] = retrieval_metrics(data.qrels, run)
        if save_runs is not None:
            save_run(run, Path(save_runs) / f"{name}.trec", name)

    def score(name: str, vectors: np.ndarray) -> None:
        record(name, top_k_run(qids, data.doc_ids, vectors, corpus))

    for name in systems:
        if name == "bm25-question":
            record(name, bm25_run(data))
        elif name == "teacher-question":
            score(name, teacher.encode([q["question"] for q in data.queries]))
        elif name == "teacher-history":
            score(name, teacher.encode([teacher.history_query(q["messages"]) for q in data.queries]))
        elif name in ("generate-then-encode", "native-query") and generated is None:
            missing = [q for q in data.queries if q["id"] not in known]
            for start in tqdm(range(0, len(missing), batch_size), desc="Generating search queries"):
                chunk = missing[start : start + batch_size]
                texts = generate_queries(*llm, [q["messages"] for q in chunk], max_new_tokens=max_new_tokens)
                known.update({q["id"]: text for q, text in zip(chunk, texts)})
            generated = [known[qid] for qid in qids]
        if name == "generate-then-encode":
            score(name, teacher.encode([g or q["question"] for g, q in zip(generated, data.queries)]))
        elif name == "native-query":
            queries = [g or q["question"] for g, q in zip(generated, data.queries)]
            score(
                name,
                query_embedder.embed_generated_queries(
                    [q["messages"] for q in data.queries], queries, batch_size=batch_size, show_progress=True
                ),
            )
        elif name == "native-context":
            conversations = [q["messages"] for q in data.queries]
            score(name, context_embedder.embed_conversations(conversations, batch_size=batch_size, show_progress=True))
        elif name in LATENT_SYSTEMS:
            embedder = (latent_embedders or {}).get(name)
            if embedder is None:
                raise InvalidArgumentError(f"System {name!r} needs a LatentEmbedder in latent_embedders[{name!r}].")
            docs = embedder.embed_documents([d["text"] for d in data.corpus], batch_size=batch_size, show_progress=True)
            vectors = embedder.embed_conversations(
                [q["messages"] for q in data.queries], batch_size=batch_size, show_progress=True
            )
            record(name, top_k_run(qids, data.doc_ids, vectors, docs))
    baseline = results.get("generate-then-encode")
    if baseline:
        for metrics in results.values():
            metrics["retention"] = {
                m: {
                    "ratio": round(metrics[m] / baseline[m], 3) if baseline[m] else None,
                    "points": round(100 * (metrics[m] - baseline[m]), 1),
                }
                for m in METRICS
            }
    report = {"data": data.name, "queries": len(qids), "passages": len(data.corpus), "systems": results}
    return report
