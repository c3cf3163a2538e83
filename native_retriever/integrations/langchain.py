"""LangChain drop-in: native query embeddings, a retriever over our index or any ``VectorStore``, chat history.

* :class:`NativeEmbeddings` is a LangChain ``Embeddings``: ``embed_query`` runs the agent LLM and the projection
  head, ``embed_documents`` the teacher. The plain ``Embeddings`` API only sees the question, so
  ``with embeddings.conversation(chat_history): ...`` binds the current conversation (a contextvar: it follows
  ``asyncio`` tasks and LangChain's executor calls) and ``embed_query`` then embeds the whole conversation.
* :class:`NativeRetriever` is a ``BaseRetriever`` over a :class:`~native_retriever.VectorIndex` or a LangChain
  ``VectorStore``; ``invoke(question, chat_history=[...], k=...)``. :meth:`NativeRetriever.with_history` gives the
  runnable that takes ``{"input", "chat_history"}`` and replaces ``create_history_aware_retriever``: no rewrite step.
* ``from_llm`` takes the ``ChatHuggingFace`` / ``HuggingFacePipeline`` the agent already runs, so the agent and the
  retriever share one copy of the weights.

Needs the ``langchain`` extra: ``pip install "native-retriever[langchain]"``.
"""
# ruff: noqa: E402  (the imports below must come after the check that names the extra)

from __future__ import annotations

from . import ConversationBinding, append_question, chat_turn, require, store_dimension

require("langchain_core", "langchain")

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import BaseMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from pydantic import ConfigDict, field_validator

from ..bm25 import DEFAULT_HYBRID, Hybrid
from ..conversation import lexical_queries
from ..embedder import NativeEmbedder
from ..errors import ConversationError, DimensionMismatchError
from ..index import SearchHit, VectorIndex
from ..protocols import Embedder, missing_members

__all__ = [
    "NativeEmbeddings",
    "NativeRetriever",
    "bind_conversation",
    "model_and_tokenizer",
    "to_chat_messages",
    "with_question",
]

LANGCHAIN_TYPES = (
    "langchain_core.messages (HumanMessage, AIMessage, SystemMessage), (role, text) tuples "
    "or {'role': ..., 'content': ...} dicts"
)


# -- messages ---------------------------------------------------------------------------------------------------
def message_text(content: Any, position: int) -> str:
    """Text of a message content: a string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p if isinstance(p, str) else p.get("text", "") for p in content if isinstance(p, (str, dict))]
        return "\n".join(part for part in parts if part)
    raise ConversationError(f"Message {position} has content of type {type(content).__name__}; give text.")


def _turn(message: Any, position: int) -> dict | None:
    if isinstance(message, BaseMessage):
        kind = message.type.removesuffix("MessageChunk").lower()
        name = getattr(message, "role", kind) if kind == "chat" else kind
        return chat_turn(name, message_text(message.content, position), position)
    if type(message).__module__.startswith("llama_index"):
        raise ConversationError(
            f"Message {position} is a LlamaIndex {type(message).__name__}; the LangChain integration takes "
            f"{LANGCHAIN_TYPES}. For LlamaIndex use native_retriever.integrations.llama_index."
        )
    if isinstance(message, tuple) and len(message) == 2:
        return chat_turn(message[0], message_text(message[1], position), position)
    if isinstance(message, Mapping) and "content" in message and ("role" in message or "type" in message):
        return chat_turn(message.get("role", message.get("type")), message_text(message["content"], position), position)
    raise ConversationError(f"Message {position} is a {type(message).__name__}; give {LANGCHAIN_TYPES}.")


def to_chat_messages(history: Sequence | BaseChatMessageHistory | None) -> list[dict]:
    """LangChain chat history (a list or a ``BaseChatMessageHistory``) as our ``{"role", "content"}`` dicts.

    Tool messages and empty AI turns (tool calls only) are left out.
    """
    if history is None:
        return []
    if isinstance(history, BaseChatMessageHistory):
        history = history.messages
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise ConversationError(
            f"The chat history must be a list of messages, not a {type(history).__name__}; give {LANGCHAIN_TYPES}."
        )
    turns = (_turn(message, position) for position, message in enumerate(history))
    return [turn for turn in turns if turn is not None]


def with_question(history: Sequence | None, question: str) -> list[dict]:
    """The conversation to embed: the history, then the question as the last user turn (unless it already is)."""
    if not isinstance(question, str):
        raise ConversationError(f"The question must be a string, got {type(question).__name__}.")
    if not question.strip():
        what = "and the chat history is empty" if not history else "(the chat history alone is not a question)"
        raise ConversationError(f"The question is empty {what}; pass the user's current question.")
    return append_question(to_chat_messages(history), question)


_BOUND = ConversationBinding("native_retriever_langchain_conversation", to_chat_messages)


def bind_conversation(history: Sequence | None) -> contextlib.AbstractContextManager[list[dict]]:
    """Within the block, :class:`NativeEmbeddings` and :class:`NativeRetriever` embed ``history`` + the question.

    An empty history (a first turn) is allowed. The binding is a contextvar: it reaches ``asyncio`` tasks created
    inside the block and LangChain's ``run_in_executor`` / ``asyncio.to_thread``, but not threads started by hand.
    """
    return _BOUND.bind(history)


# -- documents ----------------------------------------------------------------------------------------------------
def hit_document(hit: SearchHit, score_key: str = "score") -> Document:
    """A search hit of our index as a LangChain ``Document``, its score in ``metadata[score_key]``."""
    return Document(id=hit.id, page_content=hit.text, metadata={**hit.metadata, score_key: hit.score})


def document_record(document: Document) -> dict[str, Any]:
    """A ``Document`` as the plain dict agents keep in their state and messages: ``id``, ``page_content``,
    ``metadata`` (JSON-ready for checkpointers)."""
    return document.model_dump(include={"id", "page_content", "metadata"})


# -- the LLM the user already has -------------------------------------------------------------------------------
def model_and_tokenizer(llm: Any) -> tuple[Any, Any]:
    """The transformers model and tokenizer inside a ``ChatHuggingFace``, ``HuggingFacePipeline`` or pipeline."""
    if isinstance(llm, tuple) and len(llm) == 2:
        return llm
    found = llm
    if not hasattr(found, "pipeline") and hasattr(found, "llm"):  # ChatHuggingFace wraps an LLM
        found = found.llm
    pipeline = getattr(found, "pipeline", found)  # HuggingFacePipeline holds a transformers pipeline
    model, tokenizer = getattr(pipeline, "model", None), getattr(pipeline, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "config") or not callable(model):
        raise TypeError(
            f"Cannot find local transformers weights in {type(llm).__name__}. Native retrieval reads the hidden "
            "states of the agent's own model: pass a ChatHuggingFace or HuggingFacePipeline over a local "
            "transformers model (not an endpoint), a transformers pipeline, or (model, tokenizer)."
        )
    return model, tokenizer


# -- embeddings -------------------------------------------------------------------------------------------------
class NativeEmbeddings(Embeddings):
    """LangChain ``Embeddings``: queries through the agent LLM and the head, documents through the teacher.

    ``embedder`` is a :class:`~native_retriever.NativeEmbedder`, a latent-view embedder or any other
    :class:`~native_retriever.protocols.Embedder`.
    Inside ``with embeddings.conversation(chat_history):`` ``embed_query(question)`` embeds the conversation.
    """

    def __init__(self, embedder: Embedder) -> None:
        if not isinstance(embedder, Embedder):
            raise TypeError(
                f"NativeEmbeddings wraps a NativeEmbedder, got {type(embedder).__name__} (no "
                f"{', '.join(map(repr, missing_members(embedder)))}); use NativeEmbeddings.from_llm(llm) to build one "
                "from a LangChain LLM."
            )
        self.embedder = embedder

    @classmethod
    def from_llm(cls, llm: Any, head: Any = None, teacher: Any = None) -> NativeEmbeddings:
        """Share the weights of a ``ChatHuggingFace`` / ``HuggingFacePipeline`` (or ``(model, tokenizer)``)."""
        model, tokenizer = model_and_tokenizer(llm)
        return cls(NativeEmbedder(model, tokenizer, head=head, teacher=teacher))

    @property
    def dimension(self) -> int:
        """Size of the vectors this embedding returns."""
        return int(self.embedder.dimension)

    def conversation(self, history: Sequence | None) -> contextlib.AbstractContextManager[list[dict]]:
        """Bind the current conversation for ``embed_query`` (see :func:`bind_conversation`)."""
        return bind_conversation(history)

    @property
    def reads_queries(self) -> bool:
        """Whether the head reads a generated search query after the conversation (input mode ``query``)."""
        return bool(getattr(self.embedder, "reads_queries", False))

    def embed_conversation(
        self, history: Sequence | None, question: str, search_query: str | None = None
    ) -> list[float]:
        """The native vector of ``history`` followed by ``question``; a query-mode head reads ``search_query`` (the
        query the agent generated; default: the question) after them."""
        messages = with_question(history, question)
        if self.reads_queries:
            return self.embedder.embed_generated_query(messages, search_query or question).tolist()
        if len(messages) == 1:
            return self.embedder.embed_query(question).tolist()
        return self.embedder.embed_conversation(messages).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The native vector of ``text`` in the bound conversation (if any)."""
        return self.embed_conversation(_BOUND.get(), text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Teacher vectors (the space the head was trained into)."""
        if not texts:
            return []
        return self.embedder.embed_documents(list(texts)).tolist()

    async def aembed_query(self, text: str) -> list[float]:
        """Async `embed_query`, run in a worker thread with the current conversation binding."""
        return await asyncio.to_thread(self.embed_query, text)  # copies the context: the binding goes along

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async `embed_documents`, run in a worker thread."""
        return await asyncio.to_thread(self.embed_documents, texts)


def _as_embeddings(value: Any) -> NativeEmbeddings:
    return value if isinstance(value, NativeEmbeddings) else NativeEmbeddings(value)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive integer (the number of documents to return), got {k!r}")
    return k


def _store_dimension(store: Any) -> int | None:
    """The vector dimension of a store (:func:`~native_retriever.integrations.store_dimension`), else that of the
    store's own ``NativeEmbeddings`` (an empty store built with them)."""
    dim = store_dimension(store)
    embeddings = getattr(store, "embeddings", None)
    if dim is None and isinstance(embeddings, NativeEmbeddings):
        return embeddings.dimension
    return dim


# -- retriever --------------------------------------------------------------------------------------------------
class NativeRetriever(BaseRetriever):
    """Retrieves with the agent's own hidden states from a ``VectorIndex`` or any LangChain ``VectorStore``.

    ``invoke(question, chat_history=[...], k=...)`` (with a query-mode head, ``search_query=`` the query the agent
    generated); without ``chat_history`` the conversation bound with
    :func:`bind_conversation` is used, if any. On a ``VectorIndex`` the head's ranking is fused with BM25 on the
    question and the user message before it (``hybrid``, :class:`~native_retriever.bm25.Hybrid`; None: the vector
    alone); another ``VectorStore`` is searched by the vector alone. Documents carry the record id, its metadata and
    ``metadata["score"]`` (the fused score for a ``VectorIndex``, the store's own score otherwise; absent when the
    store gives none).
    """

    embeddings: NativeEmbeddings
    store: Any
    k: int = 4
    score_key: str = "score"
    hybrid: Hybrid | None = DEFAULT_HYBRID

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        store = self.store
        if not isinstance(store, VectorIndex) and not callable(getattr(store, "similarity_search_by_vector", None)):
            raise TypeError(
                f"store must be a native_retriever.VectorIndex or a LangChain VectorStore with "
                f"similarity_search_by_vector, got {type(store).__name__}"
            )
        self._check_dimension()

    @field_validator("embeddings", mode="before")
    @classmethod
    def _embeddings(cls, value: Any) -> NativeEmbeddings:
        return _as_embeddings(value)

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, value: int) -> int:
        return _check_k(value)

    @classmethod
    def from_llm(cls, llm: Any, store: Any, *, head: Any = None, teacher: Any = None, k: int = 4) -> NativeRetriever:
        """A retriever sharing the weights of the agent's ``ChatHuggingFace`` / ``HuggingFacePipeline``."""
        return cls(embeddings=NativeEmbeddings.from_llm(llm, head=head, teacher=teacher), store=store, k=k)

    def _check_dimension(self) -> None:
        dim, want = _store_dimension(self.store), self.embeddings.dimension
        if dim is not None and dim != want:
            raise DimensionMismatchError(
                f"The vector store holds {dim}-d vectors but the head gives {want}-d query vectors; index the "
                "documents with NativeEmbeddings.embed_documents (the head's teacher), or load the head trained "
                "for the store's embedding model."
            )

    def with_history(self, input_key: str = "input", history_key: str = "chat_history") -> Runnable:
        """A runnable ``{"input", "chat_history"} -> list[Document]`` for ``create_retrieval_chain``.

        It takes the place of ``create_history_aware_retriever``: the conversation is embedded as it is, with no
        question rewrite by the LLM. Callbacks and tracing nest under it.
        """

        def unpack(inputs: Any) -> tuple[str, Any]:
            if not isinstance(inputs, Mapping) or input_key not in inputs:
                got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
                raise ConversationError(
                    f"The history-aware retriever takes a dict with {input_key!r} (the question) and "
                    f"{history_key!r} (the chat history), got {got}."
                )
            return inputs[input_key], inputs.get(history_key) or []

        def retrieve(inputs: Any, config: RunnableConfig) -> list[Document]:
            question, history = unpack(inputs)
            return self.invoke(question, config, chat_history=history)

        async def aretrieve(inputs: Any, config: RunnableConfig) -> list[Document]:
            question, history = unpack(inputs)
            return await self.ainvoke(question, config, chat_history=history)

        return RunnableLambda(retrieve, afunc=aretrieve, name="native_history_aware_retriever")

    def _retrieve(
        self, query: str, k: int | None, chat_history: Sequence | None, search_query: str | None = None
    ) -> list[Document]:
        k = _check_k(self.k if k is None else k)
        history = _BOUND.get() if chat_history is None else chat_history
        vector = self.embeddings.embed_conversation(history, query, search_query)
        self._check_dimension()
        key = self.score_key
        if isinstance(self.store, VectorIndex):
            hybrid = self.hybrid
            texts = [lexical_queries(with_question(history, query), hybrid.texts)] if hybrid else None
            hits = self.store.search(vector, k=k, texts=texts, hybrid=hybrid)[0]
            return [hit_document(h, key) for h in hits]
        if callable(getattr(self.store, "similarity_search_with_score_by_vector", None)):
            pairs = self.store.similarity_search_with_score_by_vector(vector, k=k)
        else:
            pairs = [(doc, None) for doc in self.store.similarity_search_by_vector(vector, k=k)]
        return [
            Document(
                id=doc.id,
                page_content=doc.page_content,
                metadata={**doc.metadata, **({} if score is None else {key: float(score)})},
            )
            for doc, score in pairs
        ]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        chat_history: Sequence | None = None,
        search_query: str | None = None,
    ) -> list[Document]:
        return self._retrieve(query, k, chat_history, search_query)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        chat_history: Sequence | None = None,
        search_query: str | None = None,
    ) -> list[Document]:
        return await asyncio.to_thread(self._retrieve, query, k, chat_history, search_query)
