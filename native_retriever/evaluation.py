"""Retrieval metrics (ranx), exact top-k runs, saved runs, paired significance tests, and the systems ``eval`` scores.

``evaluate`` is ``native-retriever eval`` as one call; ``evaluate_systems`` scores systems given loaded models.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from .bm25 import DEFAULT_HYBRID, BM25Index, Hybrid
from .checks import check_output_path
from .conversation import lexical_queries
from .data import RetrievalData, load_data
from .errors import DataFormatError, InvalidArgumentError
from .extras import require
from .files import atomic_file
from .generation import generate_queries
from .heads import ProjectionHead
from .teacher import corpus_vectors as cached_corpus_vectors

if TYPE_CHECKING:
    from .embedder import NativeEmbedder
    from .latent import LatentEmbedder
    from .teacher import Teacher

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


def ranked_rows(
    queries: np.ndarray, docs: np.ndarray, k: int, candidates: Sequence[np.ndarray] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per query vector, its ``k`` best document rows by exact inner product and their scores, best first.

    ``candidates``: per query, the document rows it may rank (None: all of them).
    """
    for start in range(0, len(queries), 1024):
        scores = queries[start : start + 1024] @ docs.T
        if candidates is not None:
            masked = np.full_like(scores, -np.inf)
            for row, allowed in enumerate(candidates[start : start + 1024]):
                masked[row, allowed] = scores[row, allowed]
            scores = masked
        fetch = min(k, scores.shape[1])
        top = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch]
        for row, columns in enumerate(top):
            values = scores[row, columns]
            order = np.argsort(-values, kind="stable")
            keep = np.isfinite(values[order])
            yield columns[order][keep], values[order][keep]


def top_k_run(
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    queries: np.ndarray,
    docs: np.ndarray,
    k: int = 10,
    candidates: Sequence[np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Exact inner-product top-k of each query vector over the document vectors, as a ranx-style run
    (``candidates``: per query, the document rows it may rank)."""
    return {
        qid: {doc_ids[c]: float(v) for c, v in zip(columns.tolist(), values.tolist(), strict=True)}
        for qid, (columns, values) in zip(query_ids, ranked_rows(queries, docs, k, candidates), strict=True)
    }


def lexical_rankings(
    index: BM25Index, texts: Sequence[str], k: int, candidates: Sequence[np.ndarray] | None = None
) -> list[list[tuple[int, float]]]:
    """Per text, its ``k`` best documents by BM25 that share a word with it, as (row, score), best first
    (``candidates``: per text, the document rows it may rank)."""
    if candidates is None:
        return index.ranked(texts, k)
    allowed = [set(c.tolist()) for c in candidates]
    ranked = index.ranked(texts, index.size)
    return [[(r, s) for r, s in hits if r in ok][:k] for hits, ok in zip(ranked, allowed, strict=True)]


def hybrid_run(
    inputs: EvalInputs, vectors: np.ndarray, texts: Sequence[Sequence[str]], hybrid: Hybrid, k: int = 10
) -> dict[str, dict[str, float]]:
    """The top-``k`` run of query vectors over the teacher's corpus vectors fused with BM25 on each query's texts,
    as ``VectorIndex.search(texts=...)`` fuses them (stemmed BM25, ``hybrid.fuse``)."""
    doc_ids, candidates = inputs.data.doc_ids, inputs.candidates
    lexical = inputs.memo(
        f"bm25-stemmed-{hybrid.stopwords}",
        lambda: BM25Index([d["text"] for d in inputs.data.corpus], stopwords=hybrid.stopwords),
    )
    flat = [t for entry in texts for t in entry]
    flat_candidates = None if candidates is None else [c for c, entry in zip(candidates, texts) for _ in entry]
    words = iter(lexical_rankings(lexical, flat, hybrid.depth, flat_candidates))
    dense = ranked_rows(vectors, inputs.corpus_vectors, max(k, hybrid.depth), candidates)
    run = {}
    for qid, (columns, values), entry in zip(inputs.query_ids, dense, texts, strict=True):
        vector_hits = list(zip(columns.tolist(), values.tolist(), strict=True))
        fused = hybrid.fuse(vector_hits, [next(words) for _ in entry], k)
        run[qid] = {doc_ids[r]: score for r, score in fused}
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


# -- the systems `eval` scores ---------------------------------------------------------------------------------------
# Each system is a small object behind the System protocol: its name, what it needs, and its run on a data set.
# Adding one is one class (and one entry in SYSTEMS, or pass the object to evaluate_systems directly).

BASELINE = "generate-then-encode"  # the reference of each system's retention
NEEDS = {  # what a system may need, and how a Python caller gives it to evaluate_systems
    "teacher": "a Teacher (teacher=Teacher.from_pretrained())",
    "llm": "the agent LLM that writes search queries (llm=load_llm())",
    "context_embedder": "a NativeEmbedder with a context head (context_embedder=...)",
    "query_embedder": "a NativeEmbedder with a query head (query_embedder=...)",
    "latent_embedder": "a LatentEmbedder in latent_embedders[{name!r}]",
}


@dataclass
class EvalInputs:
    """What the systems of one evaluation read: the data, the models given, and the work they share, done once.

    ``generated_queries`` (query id -> text) is extended in place with the queries generated here.
    """

    data: RetrievalData
    teacher: Teacher | None = None
    llm: tuple | None = None  # (model, tokenizer) of the agent LLM
    context_embedder: NativeEmbedder | None = None
    query_embedder: NativeEmbedder | None = None
    latent_embedders: dict[str, LatentEmbedder] = field(default_factory=dict)
    batch_size: int = 8
    max_new_tokens: int = 32
    generated_queries: dict[str, str] = field(default_factory=dict)
    corpus_cache: str | os.PathLike | None = None  # where corpus vectors are cached by content (None: the default)
    candidates: list[np.ndarray] | None = None  # per judged query, the corpus rows it may rank (None: all)
    _memo: dict = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute):
        """``compute()``, done once per key (query vectors shared by the within-story pass and by two systems)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def query_ids(self) -> list[str]:
        """The judged queries' ids, in file order (the rows of every system's query vectors)."""
        return [q["id"] for q in self.data.queries]

    @property
    def conversations(self) -> list[list[dict]]:
        """Each judged query's conversation, ending with its question."""
        return [q["messages"] for q in self.data.queries]

    def has(self, need: str, system: str) -> bool:
        """Whether the input ``need`` (a key of NEEDS) of the system named ``system`` was given."""
        if need == "latent_embedder":
            return system in self.latent_embedders
        return getattr(self, need) is not None

    @cached_property
    def corpus_vectors(self) -> np.ndarray:
        """The teacher's vectors of the corpus, encoded on first use (only when a system searches them)."""
        texts = [d["text"] for d in self.data.corpus]
        return cached_corpus_vectors(self.teacher, texts, self.corpus_cache, show_progress=True)

    @cached_property
    def generated(self) -> list[str]:
        """The LLM's standalone search query of each judged query (empty when it wrote none), generated once;
        those in ``generated_queries`` are reused."""
        known = self.generated_queries
        missing = [q for q in self.data.queries if q["id"] not in known]
        for start in tqdm(range(0, len(missing), self.batch_size), desc="Generating search queries"):
            chunk = missing[start : start + self.batch_size]
            texts = generate_queries(*self.llm, [q["messages"] for q in chunk], max_new_tokens=self.max_new_tokens)
            known.update({q["id"]: text for q, text in zip(chunk, texts)})
        return [known[qid] for qid in self.query_ids]

    @property
    def search_queries(self) -> list[str]:
        """The generated search queries, the question where the LLM wrote none."""
        return [g or q["question"] for g, q in zip(self.generated, self.data.queries)]

    def teacher_run(self, vectors: np.ndarray) -> dict[str, dict[str, float]]:
        """The top-10 run of query vectors (one row per judged query) over the teacher's corpus vectors."""
        return top_k_run(self.query_ids, self.data.doc_ids, vectors, self.corpus_vectors, candidates=self.candidates)

    def teacher_vectors(self, key: str, texts) -> np.ndarray:
        """The teacher's vectors of ``texts()`` (one per judged query), encoded once per key."""
        return self.memo(key, lambda: self.teacher.encode(texts()))


@runtime_checkable
class System(Protocol):
    """A retrieval system ``evaluate_systems`` scores: a name, the inputs it needs, and its run on the data."""

    name: str
    needs: tuple[str, ...]  # keys of NEEDS

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """The system's ranx-style run (query id -> {document id: score}) over ``inputs.data``."""
        ...


class BM25Question:
    """BM25 (bm25s, Lucene's 33 English stop words, no stemming) of the current question alone: the baseline as
    first reported (hybrid search's BM25 stems and drops NLTK's longer list)."""

    name, needs = "bm25-question", ()

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """BM25's top 10 of each question."""
        index = inputs.memo(
            "bm25", lambda: BM25Index([d["text"] for d in inputs.data.corpus], stem=False, stopwords="en")
        )
        ranked = lexical_rankings(index, [q["question"] for q in inputs.data.queries], 10, inputs.candidates)
        doc_ids = inputs.data.doc_ids
        return {qid: {doc_ids[r]: s for r, s in rows} for qid, rows in zip(inputs.query_ids, ranked, strict=True)}


class TeacherQuestion:
    """The teacher's vector of the current question alone."""

    name, needs = "teacher-question", ("teacher",)

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """The teacher's top 10 of each question."""
        return inputs.teacher_run(
            inputs.teacher_vectors(self.name, lambda: [q["question"] for q in inputs.data.queries])
        )


@dataclass(frozen=True)
class TeacherHistory:
    """The teacher's vector of the conversation's text (``Teacher.history_query``): all of it, or its ``last``
    messages."""

    name: str = "teacher-history"
    last: int | None = None
    needs: tuple[str, ...] = ("teacher",)

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """The teacher's top 10 of each conversation's text."""
        texts = lambda: [inputs.teacher.history_query(m, last=self.last) for m in inputs.conversations]  # noqa: E731
        return inputs.teacher_run(inputs.teacher_vectors(self.name, texts))


class GenerateThenEncode:
    """The agent LLM writes a standalone search query, the teacher encodes it (the classic pipeline)."""

    name, needs = BASELINE, ("llm", "teacher")

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """The teacher's top 10 of each generated query."""
        return inputs.teacher_run(inputs.teacher_vectors(self.name, lambda: inputs.search_queries))


class NativeQuery:
    """A ``query`` head reads the LLM's states of the generated search query, appended to the conversation."""

    name, needs = "native-query", ("llm", "query_embedder", "teacher")

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """The top 10 of each query head vector over the teacher's corpus vectors."""
        vectors = inputs.memo(
            self.name,
            lambda: inputs.query_embedder.embed_generated_queries(
                inputs.conversations, inputs.search_queries, batch_size=inputs.batch_size, show_progress=True
            ),
        )
        return inputs.teacher_run(vectors)


@dataclass(frozen=True)
class NativeContext:
    """A ``context`` head reads the LLM's states of the conversation itself (one prefill, no generation), its
    vector searched as a user's search is by default: fused with BM25 on the last user messages (``hybrid``;
    None: the vector alone)."""

    name: str = "native-context"
    hybrid: Hybrid | None = DEFAULT_HYBRID
    needs: tuple[str, ...] = ("context_embedder", "teacher")

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """The top 10 of each context head vector over the teacher's corpus vectors (fused with BM25)."""
        vectors = inputs.memo(
            "native-context-vectors",
            lambda: inputs.context_embedder.embed_conversations(
                inputs.conversations, batch_size=inputs.batch_size, show_progress=True
            ),
        )
        if self.hybrid is None:
            return inputs.teacher_run(vectors)
        texts = [lexical_queries(m, self.hybrid.texts) for m in inputs.conversations]
        return hybrid_run(inputs, vectors, texts, self.hybrid)


@dataclass(frozen=True)
class LatentView:
    """A latent-view adapter embeds the corpus and the conversations itself (no teacher)."""

    name: str
    needs: tuple[str, ...] = ("latent_embedder",)

    def run(self, inputs: EvalInputs) -> dict[str, dict[str, float]]:
        """The top 10 of each latent conversation vector over the adapter's own corpus vectors."""
        embedder = inputs.latent_embedders[self.name]
        docs = inputs.memo(
            f"{self.name}-corpus",
            lambda: embedder.embed_documents(
                [d["text"] for d in inputs.data.corpus], batch_size=inputs.batch_size, show_progress=True
            ),
        )
        vectors = inputs.memo(
            self.name,
            lambda: embedder.embed_conversations(
                inputs.conversations, batch_size=inputs.batch_size, show_progress=True
            ),
        )
        return top_k_run(inputs.query_ids, inputs.data.doc_ids, vectors, docs, candidates=inputs.candidates)


SYSTEMS: dict[str, System] = {
    system.name: system
    for system in (
        BM25Question(),
        TeacherQuestion(),
        TeacherHistory(),
        TeacherHistory("teacher-last5", last=5),
        GenerateThenEncode(),
        NativeContext(),
        NativeContext("native-context-dense", hybrid=None),
        NativeQuery(),
        LatentView("latent"),
        LatentView("latent-contrastive"),
    )
}
DEFAULT_SYSTEMS = (
    "bm25-question",
    "teacher-question",
    "teacher-history",
    "teacher-last5",
    BASELINE,
    "native-context",
    "native-context-dense",
    "native-query",
)


def resolve_systems(systems: Sequence[str | System]) -> list[System]:
    """The System objects of ``systems`` (names of SYSTEMS, or System objects as they are); an unknown name raises
    InvalidArgumentError listing the known ones."""
    unknown = [s for s in systems if isinstance(s, str) and s not in SYSTEMS]
    if unknown:
        raise InvalidArgumentError(f"Unknown systems {unknown}; choose from {', '.join(SYSTEMS)}.")
    return [SYSTEMS[s] if isinstance(s, str) else s for s in systems]


#: Turn-depth buckets of the per-depth metrics: (first, last) user turn, None for no end.
TURN_BUCKETS = ((1, 1), (2, 3), (4, 6), (7, 10), (11, None))


def turn_depth(messages: Sequence) -> int:
    """The number of user messages in a conversation (1 for its first question)."""
    return sum(1 for m in messages if m["role"] == "user")


def by_turn_depth(data: RetrievalData, run: dict[str, dict[str, float]]) -> dict[str, dict]:
    """The metrics of ``run`` per turn-depth bucket (``TURN_BUCKETS``; labels like ``1``, ``2-3``, ``11+``)."""
    depths = {q["id"]: turn_depth(q["messages"]) for q in data.queries}
    out = {}
    for first, last in TURN_BUCKETS:
        label = f"{first}+" if last is None else str(first) if first == last else f"{first}-{last}"
        qrels = {q: r for q, r in data.qrels.items() if first <= depths[q] and (last is None or depths[q] <= last)}
        if qrels:
            out[label] = retrieval_metrics(qrels, run)
    return out


def story_candidates(data: RetrievalData) -> list[np.ndarray] | None:
    """Per judged query, the corpus rows of its own story (passage ids ``<story_id>#<n>``, as the CoQA sets have);
    None when some query's story has no passages in the corpus (within-story ranking is then undefined)."""
    rows: dict[str, list[int]] = {}
    for row, doc_id in enumerate(data.doc_ids):
        story, sep, _ = doc_id.rpartition("#")
        if sep:
            rows.setdefault(story, []).append(row)
    found = [rows.get(str(q.get("story_id"))) for q in data.queries]
    if not found or any(r is None for r in found):
        return None
    return [np.asarray(r, dtype=np.int64) for r in found]


def require_extras(systems: Sequence[System]) -> None:
    """Refuse, with the pip line, an evaluation whose extras are not installed (before any model loads)."""
    require("eval", "ranx", what="Evaluation")
    if any("latent_embedder" in s.needs for s in systems):
        require("latent", "peft", what="The latent systems")


def evaluate_systems(
    data,
    systems: Sequence[str | System] = tuple(SYSTEMS),
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
    within_story: bool = True,
) -> dict:
    """Score each system on ``data`` (a RetrievalData) over the same corpus and queries.

    Each system's metrics hold ``by_turn`` (the metrics per turn-depth bucket, ``TURN_BUCKETS``) and, when
    ``within_story`` and every query's story has passages in the corpus (``story_candidates``), ``within_story``:
    the metrics when each query ranks only its own story's passages (how well it picks the asked-about passage
    among its neighbours). The built-in systems rank within the story themselves (``EvalInputs.candidates``); a
    system of one's own that ignores it is scored on its run filtered to the story.

    ``systems``: names of SYSTEMS, or System objects (a system of one's own is one class).
    ``llm``: ``(model, tokenizer)`` of the agent LLM that writes queries for ``generate-then-encode`` (the teacher
    encodes them); ``context_embedder`` / ``query_embedder``: NativeEmbedders with a ``context`` / ``query`` head on
    the same LLM.
    ``generated_queries`` (query id -> text) holds queries written earlier; missing ones are generated and added.
    ``latent_embedders``: system name (``latent``, ``latent-contrastive``) -> LatentEmbedder; that system embeds the
    corpus and the conversations itself.
    ``save_runs``: a folder to write each system's top-10 run into as ``<system>.trec`` (for ``compare_runs``).
    ``corpus_cache``: where the teacher's corpus vectors are cached by content (default
    ``$NATIVE_RETRIEVER_HOME/corpus-vectors``, see :func:`native_retriever.teacher.corpus_vectors`).
    A system whose inputs are missing raises InvalidArgumentError before any system runs.
    """
    chosen = resolve_systems(systems)
    require_extras(chosen)
    if not data.queries:
        raise DataFormatError(
            f"Data {data.name!r} has no judged queries to score; load it with load_data(folder, require_judged=True) "
            "to see why, and add qrels.tsv lines for its queries (docs/data-format.md)."
        )
    inputs = EvalInputs(
        data,
        teacher=teacher,
        llm=llm,
        context_embedder=context_embedder,
        query_embedder=query_embedder,
        latent_embedders=dict(latent_embedders or {}),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        generated_queries=generated_queries if generated_queries is not None else {},
        corpus_cache=corpus_cache,
    )
    for system in chosen:
        missing = [need for need in system.needs if not inputs.has(need, system.name)]
        if missing:
            given = " and ".join(NEEDS[need].format(name=system.name) for need in missing)
            raise InvalidArgumentError(f"System {system.name!r} needs {given}.")
    results: dict[str, dict] = {}
    for system in chosen:
        run = system.run(inputs)
        results[system.name] = retrieval_metrics(data.qrels, run) | {"by_turn": by_turn_depth(data, run)}
        if save_runs is not None:
            save_run(run, Path(save_runs) / f"{system.name}.trec", system.name)
    candidates = story_candidates(data) if within_story else None
    if candidates is not None:
        inputs.candidates = candidates
        doc_ids = data.doc_ids
        allowed = {qid: {doc_ids[r] for r in rows.tolist()} for qid, rows in zip(inputs.query_ids, candidates)}
        for system in chosen:
            run = system.run(inputs)
            run = {q: {d: v for d, v in docs.items() if d in allowed.get(q, ())} for q, docs in run.items()}
            results[system.name]["within_story"] = retrieval_metrics(data.qrels, run)
    baseline = results.get(BASELINE)
    if baseline:
        for metrics in results.values():
            metrics["retention"] = {
                m: {
                    "ratio": round(metrics[m] / baseline[m], 3) if baseline[m] else None,
                    "points": round(100 * (metrics[m] - baseline[m]), 1),
                }
                for m in METRICS
            }
    return {"data": data.name, "queries": len(inputs.query_ids), "passages": len(data.corpus), "systems": results}


# -- `native-retriever eval` as one call ----------------------------------------------------------------------------
DEFAULT_QUERY_HEAD = Path(__file__).parent / "heads" / "smollm2-minilm-query"  #: SmolLM2's shipped query head


def read_generated_queries(path: str | os.PathLike) -> dict[str, str]:
    """A cache of generated search queries (a JSON object of query id -> text), empty when the file does not exist
    yet; checked up front: it must be a writable JSON object of strings (else DataFormatError or
    InvalidArgumentError naming the file and the fix)."""
    path = check_output_path(path, "generated_queries file", kind="file")
    if not path.is_file():
        return {}
    try:
        generated = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(
            f"generated_queries file {path} is not a UTF-8 JSON file ({exc}); delete it to generate the queries again."
        ) from exc
    if not isinstance(generated, dict) or not all(isinstance(v, str) for v in generated.values()):
        raise DataFormatError(
            f"generated_queries file {path} is not a JSON object of query id -> query text; delete it to generate "
            "the queries again."
        )
    return generated


def evaluate(
    data: str | os.PathLike | RetrievalData,
    systems: Sequence[str | System] = DEFAULT_SYSTEMS,
    *,
    llm: str | os.PathLike | None = None,
    head: ProjectionHead | str | os.PathLike | None = None,
    query_head: ProjectionHead | str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    latent_adapters: dict[str, str | os.PathLike] | None = None,
    latent_k: int | None = None,
    device: str | None = None,
    max_queries: int | None = None,
    batch_size: int = 8,
    generated_queries: str | os.PathLike | None = None,
    save_runs: str | os.PathLike | None = None,
) -> dict:
    """Load what ``systems`` need, score them on a data folder and return the report ``native-retriever eval`` writes.

    Every argument, output path and data file is checked before any model loads; then the latent adapters (each on
    its own copy of the LLM), the heads, the teacher and the LLM load, only those the systems need.
    ``data``: a data folder (docs/data-format.md; its first ``max_queries`` judged queries) or a RetrievalData.
    ``head`` / ``query_head``: heads of ``native-context`` / ``native-query`` (default: the shipped ones made for
    the LLM, matched by its weight fingerprint; NoShippedHeadError, saying how to train one, where there is none).
    ``latent_adapters``: system name -> adapter folder (from ``train-latent``) of each latent system asked for;
    ``latent_k`` overrides their latent steps. ``generated_queries``: a JSON file of generated search queries, read
    and extended, so each query is generated once. ``save_runs``: a folder for each system's ``<system>.trec`` run.

    The report: ``data``, ``queries``, ``passages``, ``systems`` (name -> metrics, as ``evaluate_systems``),
    ``heads`` (each native system's head config and dev metrics) and ``latent`` (each adapter's config and K).
    """
    from .embedder import NativeEmbedder
    from .heads import shipped_head_for
    from .models import llm_info, load_llm
    from .teacher import Teacher

    chosen = resolve_systems(systems)
    require_extras(chosen)
    needs = {need for system in chosen for need in system.needs}
    latent_adapters = latent_adapters or {}
    missing = [s.name for s in chosen if "latent_embedder" in s.needs and not latent_adapters.get(s.name)]
    if missing:
        raise InvalidArgumentError(
            f"Systems {missing} need adapter folders: latent_adapters={{name: FOLDER}} (train one with train-latent)."
        )
    if save_runs is not None:
        check_output_path(save_runs, "save_runs", kind="folder")
    known = read_generated_queries(generated_queries) if generated_queries is not None else {}
    if not isinstance(data, RetrievalData):
        data = load_data(data, max_queries=max_queries, require_judged=True)
    latent = {  # adapters (and their LLM copies) first: a bad folder fails at once
        s.name: _latent_embedder(latent_adapters[s.name], llm, device, latent_k)
        for s in chosen
        if "latent_embedder" in s.needs
    }
    # Given heads load before the LLM, so a wrong path fails at once; a missing one is the shipped head made for
    # the LLM (matched by its fingerprint), picked as soon as the LLM has loaded.
    wanted = {mode: f"{mode}_embedder" in needs for mode in ("context", "query")}
    heads = {"context": head, "query": query_head}
    heads = {mode: _head(given) if given is not None else None for mode, given in heads.items() if wanted[mode]}
    model = context = query = None
    if needs & {"llm", "context_embedder", "query_embedder"}:
        model = load_llm(llm, device=device)
        if None in heads.values():
            info = llm_info(model[0])
            heads = {
                mode: given if given is not None else _head(shipped_head_for(info, mode))
                for mode, given in heads.items()
            }
    # BM25 and the latent systems index the corpus themselves: the teacher loads only for the others
    loaded_teacher = Teacher.from_pretrained(teacher, device=device) if "teacher" in needs else None
    if model is not None:
        context = NativeEmbedder(*model, head=heads["context"], teacher=loaded_teacher) if "context" in heads else None
        query = NativeEmbedder(*model, head=heads["query"], teacher=loaded_teacher) if "query" in heads else None
    report = evaluate_systems(
        data,
        chosen,
        llm=model,
        context_embedder=context,
        query_embedder=query,
        teacher=loaded_teacher,
        batch_size=batch_size,
        generated_queries=known,
        latent_embedders=latent,
        save_runs=save_runs,
    )
    if generated_queries is not None and known:
        with atomic_file(generated_queries) as tmp:
            tmp.write_text(json.dumps(known, indent=1) + "\n")
    report["heads"] = {
        name: e.head.config.to_dict() | {"training": None, "metrics": e.head.config.metrics.get("dev")}
        for name, e in (("native-context", context), ("native-query", query))
        if e
    }
    report["latent"] = {name: e.encoder.config.to_dict() | {"metrics": None, "k": e.k} for name, e in latent.items()}
    return report


def _head(head: ProjectionHead | str | os.PathLike) -> ProjectionHead:
    return head if isinstance(head, ProjectionHead) else ProjectionHead.from_pretrained(head)


def _latent_embedder(adapter: str | os.PathLike, llm, device: str | None, k: int | None) -> LatentEmbedder:
    from .latent import LatentEmbedder

    return LatentEmbedder.from_pretrained(adapter, llm=llm, device=device, k=k)
