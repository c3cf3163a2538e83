"""LatentEmbedder: the latent view behind the same protocol as NativeEmbedder (``native_retriever.Embedder``).

Queries (conversations) and documents both go through the agent LLM with the LoRA adapter switched on for that
pass only; vectors are the LLM's hidden size (576 for SmolLM2-135M) and only comparable with documents embedded by
the same adapter (an index built with the teacher does not work with it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..checks import text_list
from ..extras import require
from ..models import load_llm
from .config import check_k
from .encoder import LatentEncoder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class LatentEmbedder:
    """Embeds conversations and documents with the latent view on the agent's own model (shared weights).

    ``k`` overrides the adapter's number of latent steps at inference (K=1: the last input token only).
    Calls are serialised by a lock, so one embedder serves many threads; the adapter is on only during a call, so
    the agent must not generate with the same model object *during* a retrieval call from another thread.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapter: LatentEncoder | str | os.PathLike,
        *,
        k: int | None = None,
    ) -> None:
        if isinstance(adapter, LatentEncoder):
            self.encoder = adapter
        else:
            self.encoder = LatentEncoder.from_pretrained(model, tokenizer, adapter)
        if self.encoder.model is not model:
            raise ValueError("The LatentEncoder wraps another model object than the one given; pass the same model.")
        self.model = model
        self.tokenizer = tokenizer
        self.k = check_k(k) if k is not None else self.encoder.config.k
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls, adapter: str | os.PathLike, llm: str | os.PathLike | None = None, device: str | None = None, **kwargs
    ) -> LatentEmbedder:
        """Load the LLM (default: SmolLM2-135M-Instruct) and the adapter folder onto it."""
        require("latent", "peft", what="The latent view")  # before the LLM loads
        model, tokenizer = load_llm(llm, device=device)
        return cls(model, tokenizer, adapter, **kwargs)

    @property
    def dimension(self) -> int:
        """Size of the vectors this embedder returns (the LLM's hidden size)."""
        return self.encoder.dimension

    def embed_conversations(
        self, conversations: Sequence[Sequence], batch_size: int = 8, show_progress: bool | None = None
    ) -> np.ndarray:
        """Latent-view vectors of many conversations, each ending with the user's question: (N, D)."""
        with self._lock:
            ids = [self.encoder.conversation_ids(c) for c in conversations]
            show = len(ids) > batch_size if show_progress is None else show_progress
            return self.encoder.embed_ids(ids, self.k, batch_size, show, "Latent embedding conversations")

    def embed_conversation(self, messages: Sequence) -> np.ndarray:
        """Latent-view vector of one conversation: (D,)."""
        return self.embed_conversations([messages], show_progress=False)[0]

    def embed_query(self, text: str) -> np.ndarray:
        """A standalone query, embedded as a one-message conversation: (D,)."""
        return self.embed_conversation([{"role": "user", "content": text}])

    def embed_documents(
        self, texts: Sequence[str], batch_size: int = 8, show_progress: bool | None = None
    ) -> np.ndarray:
        """Document vectors from the same encoder (document format of the shared formatter): (N, D)."""
        texts = text_list(texts, "embed_documents")
        with self._lock:
            ids = [self.encoder.document_ids(t) for t in texts]
            show = len(ids) > batch_size if show_progress is None else show_progress
            if not ids:
                return np.zeros((0, self.dimension), dtype=np.float32)
            return self.encoder.embed_ids(ids, self.k, batch_size, show, "Latent embedding documents")
