"""BM25 over passage texts (bm25s, English stop words): the lexical half of hybrid search, the evaluation baseline
and latent training's hard negatives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: bm25s's English stop-word lists: ``en`` (33 words, Lucene's) and ``en_plus`` (179, NLTK's: question words and
#: pronouns too).
STOPWORDS = ("en", "en_plus")


class BM25Index:
    """A BM25 index (bm25s) over a fixed list of texts; ``stem``: Snowball English stemming (PyStemmer) and
    ``stopwords`` (one of ``STOPWORDS``) apply to the texts and the queries alike."""

    def __init__(self, documents: Sequence[str], *, stem: bool = True, stopwords: str = "en_plus") -> None:
        import bm25s

        if stopwords not in STOPWORDS:
            raise ValueError(f"stopwords must be one of {STOPWORDS}, got {stopwords!r}")
        self._bm25s = bm25s
        self._stopwords = stopwords
        self._stemmer = _english_stemmer() if stem else None
        self.size = len(documents)
        self._retriever = bm25s.BM25()
        if self.size:
            self._retriever.index(self._tokens(documents), show_progress=False)

    def _tokens(self, texts: Sequence[str]):
        return self._bm25s.tokenize(list(texts), stopwords=self._stopwords, stemmer=self._stemmer, show_progress=False)

    def top(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of each query: (indices, scores), each (len(queries), min(k, size)), best first.

        A query sharing no word with any document scores 0 everywhere; callers drop zero scores.
        """
        k = min(k, self.size)
        if not queries or k == 0:
            return np.zeros((len(queries), k), dtype=np.int64), np.zeros((len(queries), k), dtype=np.float32)
        return self._retriever.retrieve(self._tokens(queries), k=k, show_progress=False)

    def ranked(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Each query's ``k`` best documents that share a word with it, as (index, score), best first."""
        rows, scores = self.top(queries, k)
        return [
            [(r, s) for r, s in zip(row, score, strict=True) if s > 0]
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
        ]


def _english_stemmer():
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


def bm25_top(documents: Sequence[str], queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``documents`` of each query by unstemmed BM25 with Lucene's stop words (latent training's hard
    negatives, as they were mined): (indices, scores), each (len(queries), min(k, documents))."""
    return BM25Index(documents, stem=False, stopwords="en").top(queries, k)


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


def convex_fusion(rankings: Sequence[tuple[Sequence, float, bool]], k: int) -> list[tuple[object, float]]:
    """Fuse scored lists (``(item, score)`` best first, a weight, whether scores start at 0) by a weighted sum of
    normalised scores (Bruch et al. 2023): a list's scores are divided by its best one when they start at 0 (BM25),
    min-max scaled over the list otherwise (inner products); the ``k`` best come back as ``(item, score)``."""
    scores: dict[object, float] = {}
    for items, weight, from_zero in rankings:
        if not items:
            continue
        values = [s for _, s in items]
        low = 0.0 if from_zero else min(values)
        span = max(values) - low
        for item, value in items:
            scores[item] = scores.get(item, 0.0) + weight * ((value - low) / span if span > 0 else 1.0)
    return sorted(scores.items(), key=lambda pair: -pair[1])[:k]


FUSIONS = ("rrf", "convex")


@dataclass(frozen=True)
class Hybrid:
    """Hybrid search: a vector ranking fused with BM25 rankings of query texts.

    A search gives each query up to ``len(weights)`` texts; for a conversation they are its last user messages,
    newest first (``conversation.lexical_queries``). Over the ``depth`` best of each list (BM25 hits that share no
    word with the text are not ranked; a passage missing from a list gets nothing from it), ``fusion`` ``rrf``
    scores a passage ``1 / (constant + vector rank)`` plus ``weights[i] / (constant + BM25 rank of text i)``;
    ``convex`` sums the lists' normalised scores (:func:`convex_fusion`), the vector's at weight 1. A query that
    brings one text only (a conversation's first question, a bare query string) weighs it by ``standalone``
    instead of ``weights[0]`` (None: ``weights[0]``): a head's vector of a lone question is its weakest, BM25's
    ranking of it its strongest. BM25 stems words and drops ``stopwords`` (``bm25.STOPWORDS``). The defaults were
    picked on held-out training data with the shipped head (docs/heads.md#hybrid-search).
    """

    weights: tuple[float, ...] = (0.5, 0.25)
    constant: int = 20
    depth: int = 100
    fusion: str = "rrf"
    stopwords: str = "en_plus"
    standalone: float | None = None

    def __post_init__(self) -> None:
        weights = self.weights
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or not weights:
            raise ValueError(f"Hybrid weights must be a non-empty sequence of numbers >= 0, got {weights!r}")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
                raise ValueError(f"Hybrid weights must be numbers >= 0, got {weights!r}")
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        lone = self.standalone
        if lone is not None:
            if isinstance(lone, bool) or not isinstance(lone, (int, float)) or not lone >= 0:
                raise ValueError(f"Hybrid standalone must be a number >= 0 or None, got {lone!r}")
            object.__setattr__(self, "standalone", float(lone))
        for name in ("constant", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Hybrid {name} must be a positive integer, got {value!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"Hybrid fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.stopwords not in STOPWORDS:
            raise ValueError(f"Hybrid stopwords must be one of {STOPWORDS}, got {self.stopwords!r}")

    @property
    def texts(self) -> int:
        """How many query texts a search uses (the number of weights)."""
        return len(self.weights)

    def fuse(
        self, vector_hits: Sequence[tuple], text_hits: Sequence[Sequence[tuple]], k: int
    ) -> list[tuple[object, float]]:
        """The ``k`` best items of a vector ranking and one BM25 ranking per query text, each a list of
        ``(item, score)`` best first, as ``(item, fused score)``."""
        if len(text_hits) > len(self.weights):
            raise ValueError(f"{len(text_hits)} query texts for {len(self.weights)} Hybrid weights")
        weights = self.weights
        if len(text_hits) == 1 and self.standalone is not None:
            weights = (self.standalone,)
        lists = [(list(vector_hits)[: self.depth], 1.0, False)]
        lists += [(list(h)[: self.depth], w, True) for h, w in zip(text_hits, weights, strict=False)]
        if self.fusion == "convex":
            return convex_fusion(lists, k)
        return reciprocal_rank_fusion([([i for i, _ in items], w) for items, w, _ in lists], k, self.constant)


#: What searches given query texts use unless told otherwise: the conversation weights picked on held-out coqa-train
#: conversations, the standalone weight on held-out squad-nyt questions (docs/heads.md#hybrid-search).
DEFAULT_HYBRID = Hybrid(standalone=3.0)
