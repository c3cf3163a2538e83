"""LlamaIndex 0.14 agents: native retrieval as a ``Memory`` block.

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

Needs the ``llama-index`` extra: ``pip install "native-retriever[llama-index]"``.
"""
# ruff: noqa: E402  (the imports below must come after the check that names the extra)

from __future__ import annotations

from . import require

require("llama_index.core", "llama-index")

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.llms import ChatMessage
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.schema import NodeWithScore

from ..agent import numbered_passages
from .llama_index import NativeRetriever, to_messages

__all__ = ["NativeMemoryBlock"]


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
        conversation = to_messages(messages or [])
        users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
        if not users:
            return ""
        conversation = conversation[: users[-1] + 1]
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
