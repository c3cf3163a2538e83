"""Drop-ins for agent frameworks. Each submodule needs its extra; importing ``native_retriever`` imports neither.

This module holds what both integrations share, framework-free: the message-role rule, the conversation binding and
the read of a vector store's dimension.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import ModuleType
from typing import Any

from ..errors import ConversationError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the pip command that installs the extra it belongs to."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"This integration needs {module!r}, which is not installed. "
            f'Install it with: pip install "native-retriever[{extra}]"'
        ) from error


def append_question(history: list[dict], question: str) -> list[dict]:
    """The conversation to embed: ``history`` then ``question`` as the last user turn, unless it already is."""
    last = history[-1] if history else None
    if last is not None and last.get("role") == "user" and str(last.get("content", "")).strip() == question.strip():
        return list(history)
    return [*history, {"role": "user", "content": question}]


#: Role names of both frameworks' messages -> our roles; ``None``: left out (tool results are not conversation turns).
#: LangChain's message types (human, ai, ...) and LlamaIndex's ``MessageRole`` values (chatbot, model, ...).
ROLES: dict[str, str | None] = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
    "tool": None,
    "function": None,
}


def chat_turn(role: Any, content: str, position: int) -> dict | None:
    """One framework message as our ``{"role", "content"}`` dict, or None where it is no conversation turn.

    ``role`` is a role name of :data:`ROLES` (a string or a string enum such as LlamaIndex's ``MessageRole``); tool
    and function results and assistant turns without text (tool calls only) give None. An unknown role raises
    ConversationError naming message ``position``.
    """
    name = getattr(role, "value", role)
    if not isinstance(name, str) or name.lower() not in ROLES:
        raise ConversationError(
            f"Message {position} has role {name!r}; use one of human/user, ai/assistant, system (tool results "
            "are left out)."
        )
    ours = ROLES[name.lower()]
    if ours is None or (ours == "assistant" and not content.strip()):
        return None
    return {"role": ours, "content": content}


class ConversationBinding:
    """The conversation bound for the query embeddings computed inside a ``with`` block (a ``ContextVar``).

    It holds per thread and per asyncio task and follows ``asyncio.to_thread`` and ``run_in_executor`` calls made
    inside the block, but not threads started by hand. ``convert`` turns a framework's chat history into our dicts.
    """

    def __init__(self, name: str, convert: Callable[[Any], list[dict]]) -> None:
        self._bound: ContextVar[tuple[dict, ...] | None] = ContextVar(name, default=None)
        self._convert = convert

    def get(self) -> list[dict] | None:
        """The bound conversation (None: nothing bound here)."""
        bound = self._bound.get()
        return None if bound is None else list(bound)

    @contextlib.contextmanager
    def bind(self, history: Any) -> Iterator[list[dict]]:
        """Bind ``history`` (converted) within the block; yields the converted messages."""
        messages = self._convert(history)
        token = self._bound.set(tuple(messages))
        try:
            yield list(messages)
        finally:
            self._bound.reset(token)


def store_dimension(store: Any) -> int | None:
    """The vector dimension of a vector store, read without a query (None: unknown, or an empty store).

    The one place the integrations read stores' internals: ``VectorIndex.dim``; LangChain's FAISS (``index.d``) and
    ``InMemoryVectorStore`` (``store``: ``{id: {"vector": ...}}``); LlamaIndex's ``SimpleVectorStore``
    (``data.embedding_dict``) and ``FaissVectorStore`` (``_faiss_index.d``). tests/test_langchain.py and
    tests/test_llama_index.py check each store.
    """
    from ..index import VectorIndex

    if isinstance(store, VectorIndex):
        return store.dim
    for faiss_index in (getattr(store, "index", None), getattr(store, "_faiss_index", None)):
        dim = getattr(faiss_index, "d", None)
        if isinstance(dim, int):
            return dim
    records = getattr(store, "store", None)  # LangChain InMemoryVectorStore
    if isinstance(records, dict) and records:
        first = next(iter(records.values()))
        if isinstance(first, dict) and first.get("vector") is not None:
            return len(first["vector"])
    embeddings = getattr(getattr(store, "data", None), "embedding_dict", None)  # LlamaIndex SimpleVectorStore
    if isinstance(embeddings, dict) and embeddings:
        return len(next(iter(embeddings.values())))
    return None
