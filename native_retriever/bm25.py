"""BM25 over passage texts (bm25s, English stop words): the evaluation baseline and latent training's hard negatives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bm25_top(documents: Sequence[str], queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``documents`` of each query by BM25: (indices, scores), each (len(queries), min(k, documents)).

    Rows are in the order of ``queries``, best first; bm25s is imported here, so only its callers need it.
    """
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(documents), stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
    return retriever.retrieve(tokens, k=min(k, len(documents)), show_progress=False)
