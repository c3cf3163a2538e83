"""LangChain 1.x agents: native retrieval as a ``create_agent`` middleware, and as a search tool.

:class:`NativeRetrievalMiddleware` retrieves before the model call that answers a user message, from the whole
conversation in the agent's state (the agent's LLM states of it, through the head: no query rewrite, no tool call),
puts the passages in the model's system message and records them in the state::

    from langchain.agents import create_agent
    from langgraph.checkpoint.memory import InMemorySaver

    agent = create_agent(chat_model, middleware=[NativeRetrievalMiddleware(retriever)], checkpointer=InMemorySaver())
    state = agent.invoke({"messages": [{"role": "user", "content": "Where was she born?"}]},
                         {"configurable": {"thread_id": "1"}})
    state["retrieved_documents"]   # [{"id", "page_content", "metadata"}]: what the answer may cite

Works with any chat model (the retrieval reads the conversation, not the model). After a tool result the model is
called again on the same user message: the passages stay, nothing is retrieved again.

For agents that decide when to search, :func:`native_search_tool` is a tool whose query vector comes from the
conversation in the agent's state (``ToolRuntime``), not from the query string the model wrote::

    agent = create_agent(chat_model, tools=[native_search_tool(retriever)])

Needs the ``langchain`` extra: ``pip install "native-retriever[langchain]"``.
"""
# ruff: noqa: E402  (the imports below must come after the check that names the extra)

from __future__ import annotations

from . import require

require("langchain.agents", "langchain")

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import OmitFromInput
from langchain.tools import ToolRuntime
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, SystemMessage, ToolMessage
from langchain_core.tools import StructuredTool
from typing_extensions import NotRequired

from ..agent import SEARCH_DESCRIPTION, numbered_passages
from ..errors import ConversationError
from ..notices import QUERY_NOT_CAPTURED, say_once
from .langchain import NativeRetriever, document_record, message_text

__all__ = [
    "CONTEXT_PROMPT",
    "SEARCH_DESCRIPTION",
    "NativeRetrievalMiddleware",
    "NativeRetrievalState",
    "native_search_tool",
]

#: The line before the numbered passages in the model's system message.
CONTEXT_PROMPT = "Passages retrieved for the user's last message; answer from them where they help:"


class NativeRetrievalState(AgentState):
    """The agent state with the passages retrieved for the current user message (``Document`` fields as a dict:
    ``id``, ``page_content``, ``metadata`` holding the score under the retriever's ``score_key``)."""

    retrieved_documents: Annotated[NotRequired[list[dict[str, Any]]], OmitFromInput]


class NativeRetrievalMiddleware(AgentMiddleware[NativeRetrievalState]):
    """Retrieve natively before each model call that answers a user message (``create_agent(middleware=[...])``).

    ``retriever``: a :class:`~native_retriever.integrations.langchain.NativeRetriever` (its ``k``, hybrid search and
    store apply). The conversation is the agent state's messages: with a LangGraph checkpointer and a
    ``thread_id`` every turn embeds the whole thread. ``prompt`` heads the passages appended to the system message.
    """

    state_schema = NativeRetrievalState

    def __init__(self, retriever: NativeRetriever, *, prompt: str = CONTEXT_PROMPT) -> None:
        super().__init__()
        if not isinstance(retriever, NativeRetriever):
            raise TypeError(
                f"NativeRetrievalMiddleware needs a NativeRetriever, got {type(retriever).__name__}; build one with "
                "NativeRetriever(embeddings=..., store=...) or NativeRetriever.from_llm(llm, store)."
            )
        self.retriever = retriever
        self.prompt = prompt

    def _question(self, messages: Sequence[BaseMessage]) -> tuple[str, list[BaseMessage]] | None:
        """(question, history) when the model is about to answer a user message; None after a tool result."""
        if not messages:
            raise ConversationError(
                "The agent state holds no messages; invoke the agent with "
                '{"messages": [{"role": "user", "content": "..."}]}.'
            )
        last = messages[-1]
        if isinstance(last, ToolMessage):
            return None
        if last.type != "human":
            raise ConversationError(
                f"The agent's last message is a {type(last).__name__}, not the user's: native retrieval embeds the "
                "conversation up to the user's current question. End the messages with a HumanMessage."
            )
        return message_text(last.content, len(messages) - 1), list(messages[:-1])

    @staticmethod
    def _update(documents: list[Document]) -> dict[str, Any]:
        return {"retrieved_documents": [document_record(d) for d in documents]}

    def before_model(self, state: NativeRetrievalState, runtime: Any) -> dict[str, Any] | None:
        """Retrieve for the current user message into ``retrieved_documents``."""
        asked = self._question(state["messages"])
        if asked is None:
            return None
        return self._update(self.retriever.invoke(asked[0], chat_history=asked[1]))

    async def abefore_model(self, state: NativeRetrievalState, runtime: Any) -> dict[str, Any] | None:
        """Async :meth:`before_model`."""
        asked = self._question(state["messages"])
        if asked is None:
            return None
        return self._update(await self.retriever.ainvoke(asked[0], chat_history=asked[1]))

    def _with_passages(self, request: ModelRequest) -> ModelRequest:
        """The request with the passages after the system message's text (a string stays a string, so chat
        templates that read text only render it; content blocks stay blocks)."""
        documents = request.state.get("retrieved_documents") or []
        if not documents:
            return request
        text = f"{self.prompt}\n{numbered_passages(d['page_content'] for d in documents)}"
        system = request.system_message
        if system is None:
            content: str | list = text
        elif isinstance(system.content, str):
            content = f"{system.content}\n\n{text}"
        else:
            content = [*system.content, {"type": "text", "text": f"\n\n{text}"}]
        return request.override(system_message=SystemMessage(content=content))

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        """Call the model with the passages appended to its system message."""
        return handler(self._with_passages(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        """Async :meth:`wrap_model_call`."""
        return await handler(self._with_passages(request))


def _asked(runtime: ToolRuntime | None, query: str, retriever: NativeRetriever) -> tuple[str, list[BaseMessage] | None]:
    """(question, history): the conversation up to the user's last message when the tool runs in an agent, else
    the query string as a standalone question."""
    messages = list((getattr(runtime, "state", None) or {}).get("messages") or [])
    users = [i for i, m in enumerate(messages) if isinstance(m, BaseMessage) and m.type == "human"]
    if not users:
        return query, None
    if retriever.embeddings.reads_queries:
        say_once(QUERY_NOT_CAPTURED)
    return message_text(messages[users[-1]].content, users[-1]), messages[: users[-1]]


def native_search_tool(
    retriever: NativeRetriever, *, name: str = "search_documents", description: str = SEARCH_DESCRIPTION
) -> StructuredTool:
    """A search tool for agents that decide when to search (``create_agent(tools=[...])``).

    In an agent the query vector comes from the conversation in the agent's state up to the user's last message
    (the same passages :class:`NativeRetrievalMiddleware` and ``retriever.invoke(question, chat_history=...)`` give
    for it); the ``query`` the model writes is used when the tool runs outside an agent (no state), as a standalone
    question, and by a query-mode head, which reads it after the conversation (one prefill of both: the agent's own
    generation ran in its tools prompt, not the head's format; logged once).
    ``response_format="content_and_artifact"``: the model reads the numbered passages, the ``ToolMessage.artifact``
    holds the ``Document``s for the application.
    """
    if not isinstance(retriever, NativeRetriever):
        raise TypeError(f"native_search_tool needs a NativeRetriever, got {type(retriever).__name__}.")

    def content(documents: list[Document]) -> tuple[str, list[Document]]:
        return numbered_passages(d.page_content for d in documents) or "No passages found.", documents

    def search(query: str, runtime: ToolRuntime = None) -> tuple[str, list[Document]]:
        question, history = _asked(runtime, query, retriever)
        return content(retriever.invoke(question, chat_history=history, search_query=query))

    async def asearch(query: str, runtime: ToolRuntime = None) -> tuple[str, list[Document]]:
        question, history = _asked(runtime, query, retriever)
        return content(await retriever.ainvoke(question, chat_history=history, search_query=query))

    search.__doc__ = asearch.__doc__ = description
    return StructuredTool.from_function(
        func=search, coroutine=asearch, name=name, description=description, response_format="content_and_artifact"
    )
