"""LlamaIndex drop-ins: ``NativeEmbedding`` (a ``BaseEmbedding``) and ``NativeRetriever`` (a ``BaseRetriever``).

Needs the extra: ``pip install "native-retriever[llama-index]"``.

* ``NativeEmbedding`` embeds queries through the agent LLM and the head and texts (documents) through the teacher.
  It implements only LlamaIndex's private hooks, so instrumentation, callbacks and ``embed_batch_size`` keep working.
  A query vector depends on the conversation: bind it with ``with bind_conversation(chat_history): ...`` and every
  query embedded inside (``index.as_retriever().retrieve(question)`` included) reads the history before the question.
* ``NativeRetriever`` retrieves from a conversation: the one bound with :func:`bind_conversation`, else its chat memory
  (``ChatMemoryBuffer`` / ``Memory``), else a fixed ``chat_history``, plus the query string as the current question.
  It is the retriever of a ``CondensePlusContextChatEngine(skip_condense=True)`` or a ``ContextChatEngine`` sharing
  its memory (:meth:`NativeRetriever.as_chat_engine`): no rewrite step, the agent's own states of the chat retrieve.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..bm25 import DEFAULT_HYBRID, Hybrid
from ..conversation import lexical_queries
from ..errors import ConversationError, DimensionMismatchError
from ..protocols import Embedder, missing_members
from . import ConversationBinding, append_question, chat_turn, require, store_dimension

require("llama_index.core", "llama-index")

from llama_index.core.base.base_retriever import BaseRetriever  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding  # noqa: E402
from llama_index.core.bridge.pydantic import PrivateAttr, model_validator  # noqa: E402
from llama_index.core.callbacks import CallbackManager  # noqa: E402
from llama_index.core.chat_engine import CondensePlusContextChatEngine  # noqa: E402
from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K  # noqa: E402
from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.core.memory import BaseMemory, Memory  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import BasePydanticVectorStore  # noqa: E402

__all__ = ["NativeEmbedding", "NativeRetriever", "bind_conversation", "llm_model_and_tokenizer", "to_messages"]


# -- conversations ----------------------------------------------------------------------------------------------
def _is_langchain(obj: Any) -> bool:
    return type(obj).__module__.startswith("langchain")


def _framework_hint(obj: Any) -> str:
    if _is_langchain(obj):
        return (
            f"it is a LangChain {type(obj).__name__}; the LlamaIndex integration takes "
            "llama_index.core.llms.ChatMessage objects (or {'role', 'content'} dicts). Convert it, or use "
            "native_retriever.integrations.langchain in LangChain code"
        )
    return f"it is a {type(obj).__name__}, not a llama_index.core.llms.ChatMessage or a {{'role', 'content'}} dict"


def to_messages(history: Iterable[ChatMessage | dict] | None) -> list[dict]:
    """LlamaIndex ``ChatMessage``s (or role/content dicts) as ``{"role", "content"}`` dicts.

    Tool and function results and assistant turns without text (tool calls) are left out; developer messages count
    as system messages, chatbot/model messages as assistant messages.
    """
    if history is None:
        return []
    if isinstance(history, (str, bytes, dict, ChatMessage)) or not isinstance(history, Iterable):
        raise ConversationError(
            f"The chat history must be a list of ChatMessage objects, got a {type(history).__name__}; "
            "pass the query string separately."
        )
    messages = []
    for position, message in enumerate(history):
        if isinstance(message, dict):
            messages.append(message)
            continue
        if not isinstance(message, ChatMessage):
            raise ConversationError(
                f"Message {position} of the chat history cannot be used: {_framework_hint(message)}."
            )
        turn = chat_turn(message.role, message.content or "", position)
        if turn is not None:
            messages.append(turn)
    return messages


def _with_question(history: Sequence[dict], query: str) -> list[dict]:
    """The history plus the query as the current question (unless the history already ends with it)."""
    if not isinstance(query, str) or not query.strip():
        raise ConversationError("The query is empty; pass the user's current question.")
    return append_question(list(history), query)


_CONVERSATION = ConversationBinding("native_retriever_llama_index_conversation", to_messages)


_SEARCH_QUERY: contextvars.ContextVar[str | None] = contextvars.ContextVar("native_retriever_search", default=None)


@contextlib.contextmanager
def bind_search_query(query: str | None) -> Iterator[None]:
    """Within the block, a query-mode head reads ``query`` (the search query the agent wrote) after the conversation
    instead of the question."""
    token = _SEARCH_QUERY.set(query)
    try:
        yield
    finally:
        _SEARCH_QUERY.reset(token)


def bind_conversation(history: Iterable[ChatMessage | dict] | None) -> contextlib.AbstractContextManager[list[dict]]:
    """Bind the chat history before the current question for the query embeddings computed inside.

    Built on a ``contextvars.ContextVar``: it holds per thread and per asyncio task and follows ``asyncio.to_thread``
    and ``run_in_executor`` calls made inside.
    ``with bind_conversation(memory.get()): index.as_retriever().retrieve(q)``.
    """
    return _CONVERSATION.bind(history)


# -- models -----------------------------------------------------------------------------------------------------
def llm_model_and_tokenizer(llm: Any) -> tuple[Any, Any]:
    """The transformers model and tokenizer held by a LlamaIndex ``HuggingFaceLLM`` (the same objects, no copy)."""
    if _is_langchain(llm):
        raise TypeError(
            f"llm is a LangChain {type(llm).__name__}; pass a LlamaIndex HuggingFaceLLM here, or use "
            "native_retriever.integrations.langchain with LangChain objects."
        )
    model, tokenizer = getattr(llm, "_model", None), getattr(llm, "_tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "config"):
        raise TypeError(
            f"llm must be a LlamaIndex HuggingFaceLLM (llama-index-llms-huggingface) holding a transformers model "
            f"and tokenizer, got {type(llm).__name__}; for other LLM objects pass model= and tokenizer= instead."
        )
    return model, tokenizer


def resolve_embedder(
    embedder: Any = None, *, llm: Any = None, model: Any = None, tokenizer: Any = None, head: Any = None, teacher=None
) -> Embedder:
    """An embedder from exactly one of: an embedder object, a ``HuggingFaceLLM``, or a model with its tokenizer."""
    if isinstance(embedder, NativeEmbedding):
        embedder = embedder.embedder
    given = [name for name, value in (("embedder", embedder), ("llm", llm), ("model", model)) if value is not None]
    if len(given) != 1:
        raise ValueError(
            "Pass exactly one of: an embedder (NativeEmbedder), llm= (a LlamaIndex HuggingFaceLLM), or model= with "
            f"tokenizer=; got {', '.join(given) or 'none'}."
        )
    if embedder is not None:
        if not isinstance(embedder, Embedder):
            raise TypeError(
                f"{type(embedder).__name__} is not an embedder (no {', '.join(missing_members(embedder))}); pass a "
                "NativeEmbedder, or llm= / model= and tokenizer= to build one."
            )
        if any(value is not None for value in (tokenizer, head, teacher)):
            raise ValueError("tokenizer=, head= and teacher= build a new embedder; they cannot go with an embedder.")
        return embedder
    if llm is not None:
        if tokenizer is not None:
            raise ValueError("llm= brings its own tokenizer; do not pass tokenizer= with it.")
        model, tokenizer = llm_model_and_tokenizer(llm)
    elif tokenizer is None:
        raise ValueError("model= needs its tokenizer: pass tokenizer= too.")
    from ..embedder import NativeEmbedder

    return NativeEmbedder(model, tokenizer, head=head, teacher=teacher)


def _check_no_cache(cache: Any) -> None:
    if cache is not None:
        raise ValueError(
            "NativeEmbedding cannot use embeddings_cache: LlamaIndex keys that cache by the query text alone, but a "
            "native query vector depends on the whole conversation (and queries and texts share its keys). Leave "
            "embeddings_cache=None; document vectors are kept by the vector store, and an IngestionPipeline cache "
            "still works for them."
        )


# -- embedding --------------------------------------------------------------------------------------------------
class NativeEmbedding(BaseEmbedding):
    """A LlamaIndex embedding model: queries from the agent LLM's own hidden states, texts from the teacher.

    Build it from a ``NativeEmbedder`` (or any embedder with the same methods), a LlamaIndex ``HuggingFaceLLM``
    (``NativeEmbedding(llm=llm)``: the LLM's model and tokenizer are shared, not copied), or ``model=`` and
    ``tokenizer=``; ``head=`` and ``teacher=`` choose the head and teacher then. Query vectors read the conversation
    bound with :func:`bind_conversation`; without one a query is a one-message conversation.
    """

    _embedder: Any = PrivateAttr()

    def __init__(
        self,
        embedder: Any = None,
        *,
        llm: Any = None,
        model: Any = None,
        tokenizer: Any = None,
        head: Any = None,
        teacher: Any = None,
        **kwargs: Any,
    ) -> None:
        embedder = resolve_embedder(embedder, llm=llm, model=model, tokenizer=tokenizer, head=head, teacher=teacher)
        if "model_name" not in kwargs:
            name = getattr(getattr(getattr(embedder, "model", None), "config", None), "name_or_path", None)
            kwargs["model_name"] = f"native:{name or type(embedder).__name__}"
        super().__init__(**kwargs)
        self._embedder = embedder

    @model_validator(mode="after")
    def refuse_embeddings_cache(self) -> NativeEmbedding:
        """Refuse an embeddings cache (cached vectors would ignore the conversation)."""
        _check_no_cache(self.embeddings_cache)
        return self

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialisation name of this class."""
        return "NativeEmbedding"

    @property
    def embedder(self) -> Embedder:
        """The wrapped embedder (``NativeEmbedder``)."""
        return self._embedder

    def conversation(self, history: Iterable[ChatMessage | dict] | None) -> contextlib.AbstractContextManager:
        """``with embed_model.conversation(chat_history): ...``: the module's :func:`bind_conversation`."""
        return bind_conversation(history)

    @property
    def reads_queries(self) -> bool:
        """Whether the head reads a generated search query after the conversation (input mode ``query``)."""
        return bool(getattr(self._embedder, "reads_queries", False))

    @property
    def dimension(self) -> int:
        """Size of the vectors this embedding returns."""
        return int(self._embedder.dimension)

    def _get_query_embedding(self, query: str) -> Embedding:
        _check_no_cache(self.embeddings_cache)
        history = _CONVERSATION.get()
        if not history:
            if not isinstance(query, str) or not query.strip():
                raise ConversationError("The query is empty; pass the user's current question.")
            return np.asarray(self._embedder.embed_query(query), dtype=np.float32).tolist()
        messages = _with_question(history, query)
        if self.reads_queries:  # a query-mode head: the agent's query after the chat
            vector = self._embedder.embed_generated_query(messages, _SEARCH_QUERY.get() or query)
        else:
            vector = self._embedder.embed_conversation(messages)
        return np.asarray(vector, dtype=np.float32).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)  # copies the bound conversation

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        _check_no_cache(self.embeddings_cache)
        if not texts:
            return []
        return np.asarray(self._embedder.embed_documents(list(texts)), dtype=np.float32).tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


# -- retriever --------------------------------------------------------------------------------------------------
def _check_top_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"similarity_top_k must be a positive integer, got {value!r}.")
    return int(value)


def _check_memory(memory: Any) -> BaseMemory | None:
    if memory is None or isinstance(memory, BaseMemory):
        return memory
    hint = "; for LangChain use native_retriever.integrations.langchain" if _is_langchain(memory) else ""
    raise TypeError(
        f"memory must be a LlamaIndex chat memory (ChatMemoryBuffer, Memory), got {type(memory).__name__}{hint}."
    )


class NativeRetriever(BaseRetriever):
    """Retrieves ``NodeWithScore``s for the current conversation, embedded natively by the agent LLM and the head.

    ``index``: a :class:`native_retriever.index.VectorIndex`, a LlamaIndex ``VectorStoreIndex`` or a vector store
    that stores text. ``embed_model``: a :class:`NativeEmbedding` or an embedder (defaults to the
    ``VectorStoreIndex``'s own ``NativeEmbedding``). The conversation is, in this order: the one bound with
    :func:`bind_conversation`, ``memory`` (read at each retrieval), ``chat_history``; the query string is appended as
    the current question. Give the chat engine the same memory (:meth:`as_chat_engine` does). A precomputed
    ``QueryBundle.embedding`` is ignored: the vector always comes from the conversation. On a ``VectorIndex`` the
    head's ranking is fused with BM25 on the question and the user message before it (``hybrid``,
    :class:`~native_retriever.bm25.Hybrid`; None: the vector alone); other indexes are searched by the vector alone.
    """

    def __init__(
        self,
        index: Any,
        embed_model: Any = None,
        *,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        memory: BaseMemory | None = None,
        chat_history: Sequence[ChatMessage | dict] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        hybrid: Hybrid | None = DEFAULT_HYBRID,
    ) -> None:
        if hybrid is not None and not isinstance(hybrid, Hybrid):
            raise TypeError(f"hybrid must be a native_retriever.bm25.Hybrid or None, got {type(hybrid).__name__}")
        self.hybrid = hybrid
        if embed_model is None and isinstance(getattr(index, "_embed_model", None), NativeEmbedding):
            embed_model = index._embed_model
        if embed_model is None:
            raise ValueError("Pass embed_model= (a NativeEmbedding or a NativeEmbedder) to embed the conversation.")
        self._embed_model = embed_model if isinstance(embed_model, NativeEmbedding) else NativeEmbedding(embed_model)
        self._similarity_top_k = _check_top_k(similarity_top_k)
        self.memory = _check_memory(memory)
        self.chat_history = to_messages(chat_history)
        self._vector_index, self._store_retriever = None, None
        self._attach(index)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _attach(self, index: Any) -> None:
        """Search our VectorIndex directly, or a VectorStoreIndex through LlamaIndex's own VectorIndexRetriever."""
        from llama_index.core import VectorStoreIndex
        from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever

        from ..index import VectorIndex

        if isinstance(index, VectorIndex):
            if index.dim != self._embed_model.dimension:
                raise DimensionMismatchError(self._dimension_message(index.dim))
            self._vector_index = index
            return
        if isinstance(index, BasePydanticVectorStore):
            if not index.stores_text:
                raise ValueError(
                    f"This {type(index).__name__} does not keep the node texts; pass the VectorStoreIndex built "
                    "on it (its docstore holds the texts) instead of the bare vector store."
                )
            index = VectorStoreIndex.from_vector_store(index, embed_model=self._embed_model)
        if not isinstance(index, VectorStoreIndex):
            raise TypeError(
                f"index must be a native_retriever VectorIndex, a LlamaIndex VectorStoreIndex or vector store, "
                f"got {type(index).__name__}."
            )
        self._store_retriever = VectorIndexRetriever(
            index, similarity_top_k=self._similarity_top_k, embed_model=self._embed_model
        )
        self._vector_store = index.vector_store
        self._check_store_dimension()

    def _dimension_message(self, found: int) -> str:
        return (
            f"The vector store holds {found}-d vectors but the head gives {self._embed_model.dimension}-d query "
            "vectors; index the documents with the teacher the head was trained for (NativeEmbedding does)."
        )

    def _check_store_dimension(self) -> None:
        found = store_dimension(self._vector_store)
        if found is not None and found != self._embed_model.dimension:
            raise DimensionMismatchError(self._dimension_message(found))

    @property
    def embed_model(self) -> NativeEmbedding:
        """The NativeEmbedding this retriever embeds queries with."""
        return self._embed_model

    @property
    def similarity_top_k(self) -> int:
        """How many hits a retrieval returns."""
        return self._similarity_top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int) -> None:
        self._similarity_top_k = _check_top_k(value)
        if self._store_retriever is not None:
            self._store_retriever.similarity_top_k = self._similarity_top_k

    # conversation sources
    def _history(self) -> list[dict]:
        bound = _CONVERSATION.get()
        if bound is not None:
            return list(bound)
        if self.memory is not None:
            return to_messages(self.memory.get())
        return list(self.chat_history)

    async def _ahistory(self) -> list[dict]:
        bound = _CONVERSATION.get()
        if bound is None and self.memory is not None:
            return to_messages(await self.memory.aget())
        return self._history()

    @staticmethod
    def _split(messages: Sequence[ChatMessage | dict]) -> tuple[list[dict], str]:
        converted = to_messages(messages)
        if not converted:
            raise ConversationError("The conversation is empty; pass at least the user's current question.")
        last = converted[-1]
        if last.get("role") != "user":
            raise ConversationError(
                f"The conversation ends with a {last.get('role')} message; it must end with the user's current "
                "question (retrieve before the assistant answers)."
            )
        return converted[:-1], last.get("content", "")

    # retrieval
    def _nodes(self, vector: Embedding, history: list[dict], query: str) -> list[NodeWithScore]:
        hybrid = self.hybrid
        texts = [lexical_queries(_with_question(history, query), hybrid.texts)] if hybrid else None
        query_vector = np.asarray(vector, dtype=np.float32)
        hits = self._vector_index.search(query_vector, k=self._similarity_top_k, texts=texts, hybrid=hybrid)[0]
        return [
            NodeWithScore(node=TextNode(id_=hit.id, text=hit.text, metadata=hit.metadata), score=hit.score)
            for hit in hits
        ]

    def _search(self, history: list[dict], query: str) -> list[NodeWithScore]:
        _with_question(history, query)  # fails early on an empty question
        if self._store_retriever is not None:
            self._check_store_dimension()
        with bind_conversation(history):
            vector = self._embed_model.get_query_embedding(query)
        if self._vector_index is not None:
            return self._nodes(vector, history, query)
        return self._store_retriever.retrieve(QueryBundle(query_str=query, embedding=vector))

    async def _asearch(self, history: list[dict], query: str) -> list[NodeWithScore]:
        _with_question(history, query)
        if self._store_retriever is not None:
            self._check_store_dimension()
        with bind_conversation(history):
            vector = await self._embed_model.aget_query_embedding(query)
        if self._vector_index is not None:
            return self._nodes(vector, history, query)
        return await self._store_retriever.aretrieve(QueryBundle(query_str=query, embedding=vector))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._search(self._history(), query_bundle.query_str)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await self._asearch(await self._ahistory(), query_bundle.query_str)

    def retrieve_conversation(self, messages: Sequence[ChatMessage | dict]) -> list[NodeWithScore]:
        """Retrieve for a whole conversation ending with the user's current question (ignores the memory)."""
        history, query = self._split(messages)
        with bind_conversation(history):
            return self.retrieve(query)

    async def aretrieve_conversation(self, messages: Sequence[ChatMessage | dict]) -> list[NodeWithScore]:
        """Async :meth:`retrieve_conversation`."""
        history, query = self._split(messages)
        with bind_conversation(history):
            return await self.aretrieve(query)

    def as_chat_engine(
        self, llm: Any, memory: BaseMemory | None = None, **kwargs: Any
    ) -> CondensePlusContextChatEngine:
        """A ``CondensePlusContextChatEngine`` without its condense (rewrite) step, sharing this retriever's memory.

        ``memory`` (default: this retriever's, else a new ``Memory`` sized to the LLM) becomes this retriever's
        memory too, so every turn retrieves from the whole chat. Other keyword arguments go to ``from_defaults``.
        """
        memory = memory or self.memory or Memory.from_defaults(token_limit=llm.metadata.context_window - 256)
        self.memory = memory
        return CondensePlusContextChatEngine.from_defaults(
            retriever=self, llm=llm, memory=memory, skip_condense=True, **kwargs
        )
