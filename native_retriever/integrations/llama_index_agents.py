"""LlamaIndex 0.14 agents: native retrieval as a ``Memory`` block, and as a tool that reads the workflow's memory.

:class:`NativeMemoryBlock` retrieves, whenever the ``Memory`` is read, from the chat history up to the user's last
message (the agent LLM's states of it, through the head: no rewrite, no tool call). ``FunctionAgent``,
``ReActAgent``, ``AgentWorkflow`` and chat engines read their memory before each answer, so they get the passages
with no tool call::

    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.memory import Memory

    memory = Memory.from_defaults(session_id="user-42", memory_blocks=[NativeMemoryBlock(retriever=retriever)])
    agent = FunctionAgent(llm=llm, tools=[...])
    await agent.run("Where was she born?", memory=memory)

The passages go where ``Memory`` puts its blocks (``insert_method``: the system message by default), numbered
``[1]``, ``[2]``, ... inside ``<native_retrieval>`` tags; :attr:`NativeMemoryBlock.last_nodes` holds the nodes (ids,
scores, metadata) of the last retrieval, for citations.

For agents that decide when to search, :func:`native_retrieval_tool` is a ``FunctionTool`` whose query vector comes
from the conversation in the workflow's memory (its ``Context``), not from the argument string the LLM wrote.

Needs the ``llama-index`` extra: ``pip install "native-retriever[llama-index]"``.
"""
# ruff: noqa: E402  (the imports below must come after the check that names the extra)

# No ``from __future__ import annotations``: FunctionTool finds the ``ctx: Context`` parameter by its real annotation.
from . import require

require("llama_index.core", "llama-index")

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.llms import ChatMessage
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.schema import NodeWithScore
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context

from ..agent import SEARCH_DESCRIPTION, numbered_passages
from ..notices import QUERY_NOT_CAPTURED, say_once
from .llama_index import NativeRetriever, bind_search_query, to_messages

__all__ = ["SEARCH_DESCRIPTION", "NativeMemoryBlock", "native_retrieval_tool"]


def up_to_last_question(messages: list[ChatMessage] | None) -> list[dict]:
    """The conversation up to and with the user's last message (empty when there is none)."""
    conversation = to_messages(messages or [])
    users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
    return conversation[: users[-1] + 1] if users else []


class NativeMemoryBlock(BaseMemoryBlock[str]):
    """A ``Memory`` block whose content is the passages a :class:`~.llama_index.NativeRetriever` finds for the
    conversation so far (the retriever's ``similarity_top_k``, index and hybrid search apply; its own ``memory`` and
    ``chat_history`` are not used: the block reads the ``Memory`` it belongs to).

    With no user message yet it is empty. Reading the same conversation again (an agent's tool loop) reuses the last
    retrieval. It stores nothing (``accept_short_term_memory`` is False).
    """

    name: str = Field(default="native_retrieval", description="The name of the memory block.")
    accept_short_term_memory: bool = Field(default=False)
    retriever: Any = Field(description="The NativeRetriever that embeds the conversation and searches.")
    _last: tuple[tuple, list[NodeWithScore]] | None = PrivateAttr(default=None)

    @field_validator("retriever")
    @classmethod
    def _check_retriever(cls, value: Any) -> NativeRetriever:
        if not isinstance(value, NativeRetriever):
            raise ValueError(
                f"NativeMemoryBlock needs a native_retriever.integrations.llama_index.NativeRetriever, got "
                f"{type(value).__name__}; build one with NativeRetriever(index, NativeEmbedding(llm=llm))."
            )
        return value

    @property
    def last_nodes(self) -> list[NodeWithScore]:
        """The nodes of the last retrieval (empty before the first)."""
        return list(self._last[1]) if self._last else []

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        conversation = up_to_last_question(messages)
        if not conversation:
            return ""
        key = tuple((m["role"], m["content"]) for m in conversation)
        last = self._last
        if last is not None and last[0] == key:
            nodes = last[1]
        else:
            nodes = await self.retriever.aretrieve_conversation(conversation)
            self._last = (key, nodes)
        return numbered_passages(n.node.get_content() for n in nodes)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Nothing to store: the passages come from the index, the conversation from the ``Memory``."""


def native_retrieval_tool(
    retriever: NativeRetriever, *, name: str = "search_documents", description: str = SEARCH_DESCRIPTION
) -> FunctionTool:
    """A ``FunctionTool`` for ``FunctionAgent`` / ``ReActAgent`` / ``AgentWorkflow`` that retrieves for the
    conversation in the workflow's memory (``ctx.store["memory"]``, up to the user's last message), through
    ``retriever``; the ``query`` the LLM writes is used when there is no memory or no user message in it, and by a
    query-mode head, which reads it after the conversation (one prefill of both; logged once, as the agent's own
    generation ran in its tools prompt, not the head's format).
    The LLM reads the numbered passages; ``ToolOutput.raw_output`` holds the ``NodeWithScore``s."""
    if not isinstance(retriever, NativeRetriever):
        raise TypeError(f"native_retrieval_tool needs a NativeRetriever, got {type(retriever).__name__}.")

    async def search(ctx: Context, query: str) -> list[NodeWithScore]:
        memory = await ctx.store.get("memory", default=None)
        conversation = up_to_last_question(await memory.aget_all() if memory is not None else [])
        if conversation and retriever.embed_model.reads_queries:
            say_once(QUERY_NOT_CAPTURED)
        with bind_search_query(query):
            return await retriever.aretrieve_conversation(conversation or [{"role": "user", "content": query}])

    async def passages(nodes: list[NodeWithScore]) -> str:
        return numbered_passages(n.node.get_content() for n in nodes) or "No passages found."

    return FunctionTool.from_defaults(async_fn=search, name=name, description=description, async_callback=passages)
