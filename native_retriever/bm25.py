"""BM25 over passage texts (bm25s, English stop words): the lexical half of hybrid search, the evaluation baseline
and latent training's hard negatives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class BM25Index:
    """A BM25 index (bm25s, English stop words) over a fixed list of texts; ``stem``: Snowball English stemming
    (PyStemmer) of the texts and the queries alike."""

    def __init__(self, documents: Sequence[str], *, stem: bool = True) -> None:
        import bm25s

        self._bm25s = bm25s
        self._stemmer = _english_stemmer() if stem else None
        self.size = len(documents)
        self._retriever = bm25s.BM25()
        if self.size:
            self._retriever.index(self._tokens(documents), show_progress=False)

    def _tokens(self, texts: Sequence[str]):
        return self._bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)

    def top(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of each query: (indices, scores), each (len(queries), min(k, size)), best first.

        A query sharing no word with any document scores 0 everywhere; callers drop zero scores.
        """
        k = min(k, self.size)
        if not queries or k == 0:
            return np.zeros((len(queries), k), dtype=np.int64), np.zeros((len(queries), k), dtype=np.float32)
        return self._retriever.retrieve(self._tokens(queries), k=k, show_progress=False)

    def ranked(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """The indices of each query's ``k`` best documents that share a word with it, best first."""
        rows, scores = self.top(queries, k)
        return [[r for r, s in zip(row, score, strict=True) if s > 0] for row, score in zip(rows.tolist(), scores)]


def _english_stemmer():
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


def bm25_top(documents: Sequence[str], queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``documents`` of each query by unstemmed BM25 (the evaluation's ``bm25-question`` baseline
    and latent training's hard negatives): (indices, scores), each (len(queries), min(k, documents))."""
    return BM25Index(documents, stem=False).top(queries, k)


def reciprocal_rank_fusion(
    rankings: Sequence[tuple[Sequence, float]], k: int, constant: int
) -> list[tuple[object, float]]:
    """Fuse ranked lists (items best first, each with a weight) by weighted reciprocal rank (Cormack et al. 2009).

    An item scores ``sum(weight / (constant + rank))`` over the lists it is in (rank 1 = first); the ``k`` best
    come back as ``(item, score)``, ties kept in the order of first appearance.
    """
    scores: dict[object, float] = {}
    for items, weight in rankings:
        for rank, item in enumerate(items, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (constant + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])[:k]


@dataclass(frozen=True)
class Hybrid:
    """Hybrid search: a vector ranking fused with BM25 rankings of query texts by weighted reciprocal rank.

    A search gives each query up to ``len(weights)`` texts; for a conversation they are its last user messages,
    newest first (``conversation.lexical_queries``). A passage scores ``1 / (constant + vector rank)`` plus
    ``weights[i] / (constant + BM25 rank of text i)`` over the ``depth`` best of each list (a passage missing from a
    list gets nothing from it; BM25 hits that share no word with the text are not ranked). The defaults (the
    current question at 0.5, the user message before it at 0.25) were picked on held-out coqa-train conversations
    with the shipped head (docs/heads.md#hybrid-search).
    """

    weights: tuple[float, ...] = (0.5, 0.25)
    constant: int = 20
    depth: int = 100

    def __post_init__(self) -> None:
        weights = self.weights
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or not weights:
            raise ValueError(f"Hybrid weights must be a non-empty sequence of numbers >= 0, got {weights!r}")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
                raise ValueError(f"Hybrid weights must be numbers >= 0, got {weights!r}")
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        for name in ("constant", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Hybrid {name} must be a positive integer, got {value!r}")

    @property
    def texts(self) -> int:
        """How many query texts a search uses (the number of weights)."""
        return len(self.weights)

    def fuse(self, vector_ranking: Sequence, text_rankings: Sequence[Sequence], k: int) -> list[tuple[object, float]]:
        """The ``k`` best items of a vector ranking and one BM25 ranking per query text, as ``(item, score)``."""
        if len(text_rankings) > len(self.weights):
            raise ValueError(f"{len(text_rankings)} query texts for {len(self.weights)} Hybrid weights")
        lists = [(list(vector_ranking)[: self.depth], 1.0)]
        lists += [(list(r)[: self.depth], w) for r, w in zip(text_rankings, self.weights, strict=False)]
        return reciprocal_rank_fusion(lists, k, self.constant)


#: What searches given query texts use unless told otherwise.
DEFAULT_HYBRID = Hybrid()
