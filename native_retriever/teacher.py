"""The document-side embedder in head mode: the teacher embedding model the heads were trained into."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .checks import text_list
from .conversation import history_text, validate_conversation
from .errors import DataFormatError
from .models import DEFAULT_TEACHER, MINILM_ALIASES, resolve_device, resolve_teacher, weight_fingerprint

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class Teacher:
    """A sentence-transformers model that returns L2-normalised float32 vectors."""

    def __init__(self, model: SentenceTransformer, name: str) -> None:
        self.model = model
        self.name = name

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, device: str | None = None) -> Teacher:
        """Load offline onto ``device`` (default the CPU; ``"auto"`` picks a CUDA GPU when there is one)."""
        from sentence_transformers import SentenceTransformer

        name = str(name_or_path or DEFAULT_TEACHER)
        device = str(resolve_device(device) or "cpu")  # checked before the model loads
        model = SentenceTransformer(resolve_teacher(name), device=device, local_files_only=True)
        display = "sentence-transformers/all-MiniLM-L6-v2" if name in MINILM_ALIASES else name
        return cls(model, display)

    @property
    def dim(self) -> int:
        """Dimension of the teacher's vectors."""
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """The teacher's input window, in tokens."""
        return int(self.model.max_seq_length)

    @property
    def info(self) -> dict:
        """Identity recorded in heads and indexes, checked when they are loaded together."""
        embeddings = self.model[0].auto_model.get_input_embeddings().weight
        return {"name": self.name, "dim": self.dim, "fingerprint": weight_fingerprint([embeddings])}

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        """Embed texts (queries or documents alike); long texts are cut at the model's window from the end."""
        texts = text_list(texts, "Teacher.encode")
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataFormatError(
                    f"Text {position} is {'empty' if isinstance(text, str) else type(text).__name__}; every "
                    "document or query needs non-empty text (drop or fill that entry)."
                )
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = len(texts) > 256
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(vectors, dtype=np.float32)

    def history_query(self, messages: Sequence, last: int | None = None) -> str:
        """The conversation as one query text (``history_text``), cut from the oldest messages to fit the window."""
        contents = [m["content"] for m in validate_conversation(messages) if m["role"] != "system"]
        recent = contents if last is None else contents[-last:]
        budget, used, keep = self.max_tokens - 2, 0, 0
        for content in reversed(recent):
            used += len(self.model.tokenizer.tokenize(content)) + 1
            if keep and used > budget:
                break
            keep += 1
        return history_text(messages, last=keep)
