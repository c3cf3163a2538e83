"""The document-side embedder in head mode: the teacher embedding model the heads were trained into."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .checks import text_list
from .conversation import history_text, validate_conversation
from .errors import DataFormatError, FolderFileError
from .files import atomic_folder, verify_folder
from .models import DEFAULT_TEACHER, MINILM_ALIASES, cache_dir, resolve_device, resolve_teacher, weight_fingerprint

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


CORPUS_CACHE_KIND = "corpus-vectors"


def texts_digest(texts: Sequence[str]) -> str:
    """The sha256 of a list of texts, in order (each length-prefixed, so the split between texts counts)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def encoding_spec(teacher: Teacher) -> dict:
    """What a teacher vector depends on besides its text: the teacher's identity, window and normalisation."""
    return {"teacher": teacher.info, "max_seq_length": teacher.max_tokens, "normalize": True}


def corpus_vectors(
    teacher: Teacher,
    texts: Sequence[str],
    cache: str | os.PathLike | None = None,
    *,
    show_progress: bool | None = None,
) -> np.ndarray:
    """``teacher.encode(texts)``, cached on disk by a digest of the texts, the teacher and its settings.

    The vectors are kept in ``cache`` (default ``$NATIVE_RETRIEVER_HOME/corpus-vectors``), one folder per digest
    written atomically; a changed text, teacher, window or normalisation gives another digest and is encoded again.
    A cache that cannot be written only warns: the vectors are returned all the same.
    """
    texts = text_list(texts, "corpus_vectors")
    spec = encoding_spec(teacher) | {"texts": texts_digest(texts), "count": len(texts)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    folder = Path(cache if cache is not None else cache_dir() / CORPUS_CACHE_KIND) / key[:32]
    try:
        if verify_folder(folder, CORPUS_CACHE_KIND) is not None:
            vectors = np.load(folder / "vectors.npy")
            if json.loads((folder / "spec.json").read_text()) == spec and vectors.shape == (len(texts), teacher.dim):
                return vectors
    except (FolderFileError, OSError, ValueError):
        pass  # missing, altered or unreadable: encode again and replace it
    vectors = teacher.encode(texts, show_progress=show_progress)
    try:
        with atomic_folder(folder, CORPUS_CACHE_KIND) as tmp:
            np.save(tmp / "vectors.npy", vectors)
            (tmp / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    except (FolderFileError, OSError) as exc:
        warnings.warn(
            f"Could not cache the corpus vectors in {folder} ({exc}); they are encoded again next time.", stacklevel=2
        )
    return vectors
