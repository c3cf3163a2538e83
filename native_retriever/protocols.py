"""The embedder protocol: what the head embedder and the latent embedder both offer to integrations and evaluation.

:class:`~native_retriever.NativeEmbedder` (head mode) and :class:`~native_retriever.latent.LatentEmbedder` satisfy
:class:`Embedder`; so can a user's own wrapper. Code that takes "an embedder" checks ``isinstance(x, Embedder)`` (the
members are present) rather than probing attributes one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Conversations (the query side) and documents into one vector space of ``dimension`` floats, rows unit-norm."""

    @property
    def dimension(self) -> int:
        """Size of the vectors it returns."""
        ...

    def embed_conversations(
        self, conversations: Sequence[Sequence], batch_size: int = 8, show_progress: bool | None = None
    ) -> np.ndarray:
        """Vectors of many conversations, each ending with the user's question: (N, D)."""
        ...

    def embed_conversation(self, messages: Sequence) -> np.ndarray:
        """Vector of one conversation ending with the user's question: (D,)."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """A standalone query, embedded as a one-message conversation: (D,)."""
        ...

    def embed_documents(
        self, texts: Sequence[str], batch_size: int = ..., show_progress: bool | None = None
    ) -> np.ndarray:
        """Vectors of document texts, comparable with the query side: (N, D)."""
        ...


#: The members an :class:`Embedder` has, for error messages that name what is missing.
EMBEDDER_MEMBERS = tuple(name for name in vars(Embedder) if not name.startswith("_"))


def missing_members(obj: Any) -> list[str]:
    """The :class:`Embedder` members ``obj`` lacks (empty: it is an embedder)."""
    return [name for name in EMBEDDER_MEMBERS if not hasattr(obj, name)]
