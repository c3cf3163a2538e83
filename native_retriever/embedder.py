"""NativeEmbedder: query vectors from a running agent LLM's own hidden states, documents through the teacher."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .capture import ConversationCapture
from .checks import text_list
from .conversation import (
    EncodedConversation,
    PromptFormat,
    encode_conversation,
)
from .errors import DimensionMismatchError, IncompatibleHeadError
from .generation import generate_query
from .heads import ProjectionHead, shipped_head_for
from .models import llm_info, load_llm
from .states import pad_states, select_tokens, token_states
from .teacher import Teacher

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_HEAD = Path(__file__).parent / "heads" / "smollm2-minilm"  #: SmolLM2's shipped context head


class NativeEmbedder:
    """Embeds conversations with the agent's own LLM and a projection head; documents with the teacher.

    ``model`` and ``tokenizer`` are the agent's own objects: the embedder holds references, never a copy, and runs
    on the model's device. The teacher loads lazily, only when documents are embedded. Without ``head``, the
    shipped context head made for ``model`` (matched by its weight fingerprint, ``heads.shipped_head_for``) is
    used; an LLM with none raises NoShippedHeadError saying how to train one.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        head: ProjectionHead | str | os.PathLike | None = None,
        teacher: Teacher | str | None = None,
        *,
        check_compatible: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        info = llm_info(model) if check_compatible or head is None else {}
        if not isinstance(head, ProjectionHead):
            head = ProjectionHead.from_pretrained(head or shipped_head_for(info, "context"))
        self.head = head
        if check_compatible:
            self.head.check_compatible(llm=info)  # identity, sizes, then the head's layers
            if isinstance(teacher, Teacher):  # a teacher loaded by name is checked when it loads
                self.head.check_compatible(teacher=teacher.info)
        else:  # unchecked, but a layer the LLM does not have would fail at the first embed
            self.head.config.check_layers(int(model.config.num_hidden_layers), IncompatibleHeadError)
        self._teacher = teacher
        self._teacher_lock = threading.Lock()
        self._lock = threading.RLock()  # one forward at a time: safe from threads and executor calls
        self._document_lock = threading.Lock()
        self.prompt_format = PromptFormat.from_dict(self.head.config.prompt_format)
        parameter = next(model.parameters())
        self.head.to(device=parameter.device).eval()

    @classmethod
    def from_pretrained(
        cls,
        llm: str | os.PathLike | None = None,
        head: ProjectionHead | str | os.PathLike | None = None,
        teacher: Teacher | str | None = None,
        device: str | None = None,
    ) -> NativeEmbedder:
        """Load the LLM (default: SmolLM2-135M-Instruct) and wrap it with ``head`` (default: the shipped head made
        for that LLM); mostly for scripts and the CLI."""
        model, tokenizer = load_llm(llm, device=device)
        return cls(model, tokenizer, head=head, teacher=teacher)

    @property
    def reads_queries(self) -> bool:
        """Whether the head reads a generated search query after the conversation (input mode ``query``)."""
        return self.head.config.input_mode == "query"

    @property
    def dimension(self) -> int:
        """Size of the vectors this embedder returns (the head's output, the teacher's dimension)."""
        return self.head.output_dim

    @property
    def teacher(self) -> Teacher:
        """The document-side embedder (loaded on first use, on the LLM's device, and checked against the head)."""
        with self._teacher_lock:
            if not isinstance(self._teacher, Teacher):
                name = self._teacher or self.head.config.teacher.get("name")
                self._teacher = Teacher.from_pretrained(name, device=str(next(self.model.parameters()).device))
                self.head.check_compatible(teacher=self._teacher.info)
            return self._teacher

    # -- query side -------------------------------------------------------------------------------------------
    def tokenize(self, messages: Sequence, query: str | None = None) -> EncodedConversation:
        """The formatted, window-cut token ids of a conversation (the head's prompt format)."""
        return encode_conversation(self.tokenizer, messages, self.prompt_format, query=query)

    def head_vectors(
        self,
        states: Sequence[torch.Tensor],
        encoded: Sequence[EncodedConversation],
        offsets: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Run the head on token states (from any prefill of the same token ids): ``states[i]`` holds positions
        ``offsets[i]`` (default 0) to the end of ``encoded[i]``, which must cover the head's span."""
        config = self.head.config
        offsets = offsets or [0] * len(encoded)
        spans = [select_tokens(e, config.span, config.max_input_tokens) for e in encoded]
        if any(a < offset for (a, _), offset in zip(spans, offsets)):
            raise ValueError("The states given start after the head's span; pass states from earlier positions.")
        dtype = next(self.head.parameters()).dtype
        picked = [s[a - o : b - o].to(dtype) for s, (a, b), o in zip(states, spans, offsets)]
        batch, mask = pad_states(picked)
        with torch.inference_mode():
            return self.head(batch, mask).cpu().numpy().astype(np.float32)

    def _embed(self, encoded: list[EncodedConversation], batch_size: int, show_progress: bool | None) -> np.ndarray:
        with self._lock:
            return self._embed_locked(encoded, batch_size, show_progress)

    def _embed_locked(
        self, encoded: list[EncodedConversation], batch_size: int, show_progress: bool | None
    ) -> np.ndarray:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        vectors = np.zeros((len(encoded), self.dimension), dtype=np.float32)
        show = len(encoded) > batch_size if show_progress is None else show_progress
        with tqdm(total=len(encoded), disable=not show, desc="Embedding conversations") as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                chunk = [encoded[i] for i in rows]
                states = token_states(self.model, [e.input_ids for e in chunk], self.head.config.layers)
                vectors[rows] = self.head_vectors(states, chunk)
                bar.update(len(rows))
        return vectors

    def embed_conversations(
        self, conversations: Sequence[Sequence], batch_size: int = 8, show_progress: bool | None = None
    ) -> np.ndarray:
        """Head-mode ``context`` vectors of many conversations: (N, D), one prefill each, no generation."""
        self._require_mode("context")
        with self._lock:  # the fast tokenizer is not safe to share between threads
            encoded = [self.tokenize(c) for c in conversations]
        return self._embed(encoded, batch_size, show_progress)

    def embed_conversation(self, messages: Sequence) -> np.ndarray:
        """Head-mode ``context`` vector of one conversation ending with the user's question: (D,)."""
        return self.embed_conversations([messages], show_progress=False)[0]

    def embed_query(self, text: str) -> np.ndarray:
        """A standalone query, embedded as a one-message conversation: (D,)."""
        if self.head.config.input_mode == "query":
            return self.embed_generated_query([{"role": "user", "content": text}], text)
        return self.embed_conversation([{"role": "user", "content": text}])

    def embed_generated_queries(
        self,
        conversations: Sequence[Sequence],
        queries: Sequence[str],
        batch_size: int = 8,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Head-mode ``query`` vectors: states of the search-query tokens generated after each conversation."""
        self._require_mode("query")
        with self._lock:
            encoded = [self.tokenize(c, query=q) for c, q in zip(conversations, queries, strict=True)]
        return self._embed(encoded, batch_size, show_progress)

    def embed_generated_query(self, messages: Sequence, query: str) -> np.ndarray:
        """Head-mode ``query`` vector of one generated search query in its conversation: (D,)."""
        return self.embed_generated_queries([messages], [query], show_progress=False)[0]

    def generate_query(self, messages: Sequence, max_new_tokens: int = 32) -> str:
        """The agent LLM rewrites the last turn into a standalone search query (greedy; generate-then-encode)."""
        with self._lock:
            return generate_query(self.model, self.tokenizer, messages, max_new_tokens)

    def _require_mode(self, mode: str) -> None:
        if self.head.config.input_mode != mode:
            other = "embed_generated_query" if mode == "context" else "embed_conversation"
            raise ValueError(
                f"This head was trained for input mode {self.head.config.input_mode!r}; use {other} with it, "
                f"or load a head trained for {mode!r}."
            )

    def capture(self, extend: bool = False):
        """Observe the agent's own next prefill of ``self.model`` and embed it with the head, no extra LLM pass.

        ``with embedder.capture() as cap: out = model.generate(**batch)``, then ``cap.vectors()`` (B, D). The prompt
        must be ``self.tokenize(messages).input_ids`` (batches left-padded). See ``native_retriever.capture``.
        ``extend``: record a call that extends a cache too (``native_retriever.turn_cache`` keeps the states before).
        """
        return ConversationCapture(self, extend=extend)

    # -- document side ----------------------------------------------------------------------------------------
    def embed_documents(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None
    ) -> np.ndarray:
        """Document vectors from the teacher, L2-normalised like the query side: (N, D)."""
        texts = text_list(texts, "embed_documents")
        teacher = self.teacher
        with self._document_lock:  # the teacher's tokenizer is not safe to share between threads either
            vectors = teacher.encode(texts, batch_size=batch_size, show_progress=show_progress)
        if vectors.shape[1] != self.dimension:
            raise DimensionMismatchError(
                f"The teacher gives {vectors.shape[1]}-d vectors but the head gives {self.dimension}-d; "
                "use the teacher the head was trained for."
            )
        return vectors
