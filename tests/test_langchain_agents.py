"""The create_agent middleware: retrieval from the agent state's conversation, passages in the system message,
documents in the state, multi-turn through a LangGraph checkpointer, async, the tool loop and bad input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import conversations, topic_index
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests
from langgraph.checkpoint.memory import InMemorySaver

from native_retriever.errors import ConversationError
from native_retriever.integrations.langchain import NativeEmbeddings, NativeRetriever
from native_retriever.integrations.langchain_agents import (
    CONTEXT_PROMPT,
    NativeRetrievalMiddleware,
    native_search_tool,
)

MULTI_TURN = [messages for _, messages, _ in conversations() if len(messages) > 2][:3]


class RecordingChatModel(BaseChatModel):
    """Answers with scripted messages and records the prompt of every call."""

    replies: list[AIMessage]
    prompts: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "recording"

    def bind_tools(self, tools: Any, **kwargs: Any):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.prompts.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self.replies[len(self.prompts) - 1])])


def model(*replies: str | AIMessage) -> RecordingChatModel:
    return RecordingChatModel(replies=[r if isinstance(r, AIMessage) else AIMessage(r) for r in replies], prompts=[])


@pytest.fixture(scope="module")
def retriever(embedder) -> NativeRetriever:
    index = topic_index(embedder)
    return NativeRetriever(embeddings=NativeEmbeddings(embedder), store=index, k=3)


def as_langchain(messages: list[dict]) -> list[BaseMessage]:
    kinds = {"user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]


def expected(retriever: NativeRetriever, messages: list[dict]) -> list[dict]:
    """What the retriever gives for the conversation directly (ids, order, scores)."""
    docs = retriever.invoke(messages[-1]["content"], chat_history=as_langchain(messages[:-1]))
    return [{"id": d.id, "page_content": d.page_content, "metadata": d.metadata} for d in docs]


def system_text(prompt: list[BaseMessage]) -> str:
    assert isinstance(prompt[0], SystemMessage) and isinstance(prompt[0].content, str)  # chat templates read text
    return prompt[0].content


def test_the_model_gets_the_passages_retrieved_for_the_whole_conversation(retriever):
    messages = MULTI_TURN[0]
    chat = model("An answer.")
    agent = create_agent(chat, middleware=[NativeRetrievalMiddleware(retriever)], system_prompt="Be brief.")
    state = agent.invoke({"messages": as_langchain(messages)})
    want = expected(retriever, messages)
    assert state["retrieved_documents"] == want and len(want) == 3
    text = system_text(chat.prompts[0])
    assert text.startswith(f"Be brief.\n\n{CONTEXT_PROMPT}\n[1] ")
    for n, doc in enumerate(want, 1):
        assert f"[{n}] {doc['page_content']}" in text
    assert [m.content for m in chat.prompts[0][1:]] == [m["content"] for m in messages]  # the conversation is untouched
    assert state["messages"][-1].content == "An answer."


def test_turns_of_a_checkpointed_thread_embed_the_whole_thread(retriever):
    messages = MULTI_TURN[1]
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    agent = create_agent(
        model(*assistant, "last", "other"),
        middleware=[NativeRetrievalMiddleware(retriever)],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "t1"}}
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    for i in users:
        state = agent.invoke({"messages": [HumanMessage(messages[i]["content"])]}, config)
        assert state["retrieved_documents"] == expected(retriever, messages[: i + 1])
    assert len(state["messages"]) == len(messages) + 1
    other = agent.invoke(
        {"messages": [HumanMessage(messages[users[-1]]["content"])]}, {"configurable": {"thread_id": "t2"}}
    )
    assert other["retrieved_documents"] == expected(retriever, [messages[users[-1]]])  # a new thread starts afresh


def test_async_agents_and_concurrent_threads_get_what_a_serial_call_gets(retriever):
    async def turn(messages, thread):
        agent = create_agent(
            model("ok"), middleware=[NativeRetrievalMiddleware(retriever)], checkpointer=InMemorySaver()
        )
        state = await agent.ainvoke({"messages": as_langchain(messages)}, {"configurable": {"thread_id": thread}})
        return state["retrieved_documents"]

    async def all_turns():
        return await asyncio.gather(*(turn(m, str(i)) for i, m in enumerate(MULTI_TURN)))

    assert asyncio.run(all_turns()) == [expected(retriever, m) for m in MULTI_TURN]


def test_after_a_tool_result_the_passages_stay_and_nothing_is_retrieved_again(retriever, monkeypatch):
    @tool
    def lookup(name: str) -> str:
        """Look a name up."""
        return f"{name} is known."

    call = AIMessage("", tool_calls=[{"name": "lookup", "args": {"name": "Zorblat"}, "id": "c1", "type": "tool_call"}])
    chat = model(call, "Done.")
    middleware = NativeRetrievalMiddleware(retriever)
    agent = create_agent(chat, tools=[lookup], middleware=[middleware])
    messages = MULTI_TURN[0]
    calls = []
    invoke = NativeRetriever.invoke
    monkeypatch.setattr(NativeRetriever, "invoke", lambda self, *a, **kw: calls.append(a) or invoke(self, *a, **kw))
    state = agent.invoke({"messages": as_langchain(messages)})
    assert len(calls) == 1 and len(chat.prompts) == 2 and isinstance(chat.prompts[1][-1], ToolMessage)
    assert system_text(chat.prompts[1]) == system_text(chat.prompts[0])
    assert state["retrieved_documents"] == expected(retriever, messages)


def test_the_search_tool_reads_the_conversation_in_the_agent_state(retriever):
    messages = MULTI_TURN[2]
    call = {"name": "search_documents", "args": {"query": "it"}, "id": "c1", "type": "tool_call"}
    chat = model(AIMessage("", tool_calls=[call]), "Done.")
    agent = create_agent(chat, tools=[native_search_tool(retriever)])
    state = agent.invoke({"messages": as_langchain(messages)})
    result = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    want = expected(retriever, messages)  # the conversation's passages, not those of the query "it"
    assert [d.id for d in result.artifact] == [d["id"] for d in want]
    assert result.content == "\n".join(f"[{n}] {d['page_content']}" for n, d in enumerate(want, 1))
    assert [d.metadata for d in result.artifact] == [d["metadata"] for d in want]

    async def arun():
        return await create_agent(
            model(AIMessage("", tool_calls=[call]), "Done."), tools=[native_search_tool(retriever)]
        ).ainvoke({"messages": as_langchain(messages)})

    again = next(m for m in asyncio.run(arun())["messages"] if isinstance(m, ToolMessage))
    assert [d.id for d in again.artifact] == [d["id"] for d in want]


def test_with_a_query_mode_head_the_tool_reads_the_agents_query_after_the_conversation(
    embedder, query_embedder, caplog
):
    index = topic_index(embedder)
    retriever = NativeRetriever(embeddings=NativeEmbeddings(query_embedder), store=index, k=3, hybrid=None)
    messages = MULTI_TURN[2]
    call = {"name": "search_documents", "args": {"query": "the river's best season"}, "id": "c1", "type": "tool_call"}
    with caplog.at_level("WARNING", logger="native_retriever"):
        for _ in range(2):
            agent = create_agent(
                model(AIMessage("", tool_calls=[call]), "Done."), tools=[native_search_tool(retriever)]
            )
            state = agent.invoke({"messages": as_langchain(messages)})
    result = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    vector = query_embedder.embed_generated_query(messages, "the river's best season")
    assert [d.id for d in result.artifact] == [h.id for h in index.search(vector, k=3)[0]]
    said = [r.message for r in caplog.records if "query-mode head" in r.message]
    assert len(said) == 1 and "cannot be used" in said[0]  # the fallback is said once, not per call


def test_outside_an_agent_the_tool_searches_for_its_query(retriever):
    search = native_search_tool(retriever)
    question = MULTI_TURN[0][0]["content"]
    output = search.invoke({"type": "tool_call", "name": "search_documents", "args": {"query": question}, "id": "x"})
    assert [d.id for d in output.artifact] == [d["id"] for d in expected(retriever, [MULTI_TURN[0][0]])]
    with pytest.raises(ConversationError, match="question is empty"):
        search.invoke({"query": " "})
    with pytest.raises(TypeError, match="needs a NativeRetriever"):
        native_search_tool(retriever.store)


class SearchToolSuite:
    """What LangChain's tool suites need: the tool (over the module's retriever) and an example call."""

    @pytest.fixture(autouse=True)
    def _tool(self, retriever):
        self.instance = native_search_tool(retriever)

    @property
    def tool_constructor(self):
        return self.instance

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"query": "What can I see at the Zorblat festival?"}


class TestSearchToolUnit(SearchToolSuite, ToolsUnitTests):
    pass


class TestSearchToolIntegration(SearchToolSuite, ToolsIntegrationTests):
    # the suite has async tests; pytest-asyncio runs them (strict mode), its note on the sync ones is expected
    pytestmark = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings("ignore:The test .* is marked with '@pytest.mark.asyncio'"),
    ]


def test_bad_agent_input_is_refused_with_the_fix(retriever):
    middleware = NativeRetrievalMiddleware(retriever)
    with pytest.raises(ConversationError, match="holds no messages"):
        middleware.before_model({"messages": []}, None)
    with pytest.raises(ConversationError, match="not the user's"):
        middleware.before_model({"messages": [HumanMessage("hi"), AIMessage("hello")]}, None)
    with pytest.raises(ConversationError, match="question is empty"):
        middleware.before_model({"messages": [HumanMessage("  ")]}, None)
    with pytest.raises(TypeError, match="needs a NativeRetriever"):
        NativeRetrievalMiddleware(retriever.store)


def test_a_system_prompt_of_content_blocks_keeps_its_blocks(retriever):
    chat = model("ok")
    system = SystemMessage(content=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}])
    agent = create_agent(chat, middleware=[NativeRetrievalMiddleware(retriever)], system_prompt=system)
    agent.invoke({"messages": as_langchain(MULTI_TURN[0])})
    blocks = chat.prompts[0][0].content
    assert blocks[0] == system.content[0] and blocks[1]["text"].startswith(f"\n\n{CONTEXT_PROMPT}\n[1] ")


@pytest.mark.slow
def test_the_create_agent_example_retrieves_each_turns_passage_first():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "examples/langchain_create_agent.py"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    script = json.loads((root / "native_retriever" / "resources" / "demo_conversation.json").read_text())
    turns = result.stdout.split("User: ")[1:]
    assert len(turns) == len(script["turns"]) == 4
    for turn, expected_title in zip(turns, script["expected_topic_titles"], strict=True):
        retrieved = [
            line.split("]", 1)[1].split("  (score")[0].strip() for line in turn.splitlines() if "(score" in line
        ]
        assert len(retrieved) == 3 and retrieved[0] == expected_title, turn
        assert "Assistant: " in turn


def test_the_retrieval_is_a_child_run_of_the_agent_so_callbacks_see_it(retriever):
    from langchain_core.callbacks import BaseCallbackHandler

    class Seen(BaseCallbackHandler):
        def __init__(self):
            self.retrievals = []

        def on_retriever_end(self, documents, *, run_id, parent_run_id=None, **kwargs):
            self.retrievals.append((parent_run_id, [d.id for d in documents]))

    seen = Seen()
    messages = MULTI_TURN[0]
    agent = create_agent(model("ok"), middleware=[NativeRetrievalMiddleware(retriever)])
    state = agent.invoke({"messages": as_langchain(messages)}, {"callbacks": [seen]})
    assert [ids for _, ids in seen.retrievals] == [[d["id"] for d in state["retrieved_documents"]]]
    assert seen.retrievals[0][0] is not None  # nested under the agent's run, not a run of its own
