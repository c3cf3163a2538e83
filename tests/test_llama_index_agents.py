"""LlamaIndex agents: the Memory block (passages for the conversation in the Memory, where Memory puts its blocks,
in a FunctionAgent with no tool call, reused within a tool loop) and the retrieval tool that reads the workflow's
memory; bad input."""

from __future__ import annotations

import asyncio

import pytest
from conftest import conversations, topic_index
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.mock import MockFunctionCallingLLMWithChatMemoryOfLastCall
from llama_index.core.memory import Memory
from llama_index.core.tools import ToolSelection

from native_retriever.agent import numbered_passages
from native_retriever.integrations.llama_index import NativeEmbedding, NativeRetriever
from native_retriever.integrations.llama_index_agents import NativeMemoryBlock, native_retrieval_tool

MULTI_TURN = [messages for _, messages, _ in conversations() if len(messages) > 2][:3]


def chat_messages(messages: list[dict]) -> list[ChatMessage]:
    return [ChatMessage(role=m["role"], content=m["content"]) for m in messages]


@pytest.fixture(scope="module")
def retriever(embedder) -> NativeRetriever:
    index = topic_index(embedder)
    return NativeRetriever(index, NativeEmbedding(embedder), similarity_top_k=3)


def memory(retriever, session: str = "s") -> Memory:
    return Memory.from_defaults(session_id=session, memory_blocks=[NativeMemoryBlock(retriever=retriever)])


def expected(retriever, messages: list[dict]) -> tuple[list[str], str]:
    nodes = retriever.retrieve_conversation(messages)
    return [n.node.node_id for n in nodes], numbered_passages(n.node.get_content() for n in nodes)


def system_text(messages: list[ChatMessage]) -> str:
    """The system messages' text (FunctionAgent puts its system_prompt in a message before the Memory's)."""
    assert messages[0].role == "system"
    return "\n".join(m.content for m in messages if m.role == "system")


def test_reading_the_memory_gives_the_passages_for_the_whole_conversation(retriever):
    messages = MULTI_TURN[0]
    mem = memory(retriever)
    mem.put_messages(chat_messages(messages))
    got = mem.get()
    ids, passages = expected(retriever, messages)
    assert "<native_retrieval>" in system_text(got) and passages in system_text(got)
    assert [m.content for m in got[1:]] == [m["content"] for m in messages]  # the chat itself is untouched
    block = mem.memory_blocks[0]
    assert [n.node.node_id for n in block.last_nodes] == ids and len(ids) == 3


# llama-index-workflows inspects the agent's attributes, pydantic's deprecated ones included: its warnings, not ours
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")
def test_a_function_agent_gets_the_passages_with_no_tool_call(retriever):
    messages = MULTI_TURN[1]
    mem = memory(retriever, "agent")
    mem.put_messages(chat_messages(messages[:-1]))
    llm = MockFunctionCallingLLMWithChatMemoryOfLastCall()
    agent = FunctionAgent(llm=llm, tools=[], system_prompt="Be brief.")

    async def run():
        return await agent.run(messages[-1]["content"], memory=mem)

    asyncio.run(run())
    sent = llm.last_chat_messages
    _, passages = expected(retriever, messages)
    assert passages in system_text(sent) and "Be brief." in system_text(sent)
    assert sent[-1].role == "user" and sent[-1].content == messages[-1]["content"]


def test_the_same_conversation_is_retrieved_once_and_a_new_question_retrieves_again(retriever, monkeypatch):
    messages = MULTI_TURN[2]
    calls = []
    original = NativeRetriever.aretrieve_conversation

    async def counting(self, conversation):
        calls.append(len(conversation))
        return await original(self, conversation)

    monkeypatch.setattr(NativeRetriever, "aretrieve_conversation", counting)
    mem = memory(retriever)
    mem.put_messages(chat_messages(messages))
    first = mem.get()
    mem.put_messages([ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": []})])
    mem.put_messages([ChatMessage(role="tool", content="a tool result")])
    assert system_text(mem.get()) == system_text(first) and calls == [len(messages)]  # the tool loop reuses it
    mem.put_messages([ChatMessage(role="assistant", content="Yes."), ChatMessage(role="user", content="Why?")])
    mem.get()
    assert calls == [len(messages), len(messages) + 2]


def test_an_empty_memory_has_no_block_and_a_wrong_retriever_is_refused(retriever):
    assert memory(retriever).get() == []
    with pytest.raises(ValueError, match="needs a native_retriever.integrations.llama_index.NativeRetriever"):
        NativeMemoryBlock(retriever="not a retriever")


@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")
def test_the_retrieval_tool_reads_the_conversation_in_the_workflow_memory(retriever):
    messages = MULTI_TURN[0]
    call = ToolSelection(tool_id="c1", tool_name="search_documents", tool_kwargs={"query": "it"})
    replies = iter(
        [
            ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [call]}),
            ChatMessage(role="assistant", content="Done."),
        ]
    )
    llm = MockFunctionCallingLLMWithChatMemoryOfLastCall(response_generator=lambda messages, **kw: next(replies))
    agent = FunctionAgent(llm=llm, tools=[native_retrieval_tool(retriever)])
    mem = Memory.from_defaults(session_id="tool")
    mem.put_messages(chat_messages(messages[:-1]))

    async def run():
        handler = agent.run(messages[-1]["content"], memory=mem)
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        await handler
        return results

    (result,) = asyncio.run(run())
    ids, passages = expected(retriever, messages)  # the conversation's passages, not those of the query "it"
    assert not result.tool_output.is_error, result.tool_output.content
    assert [n.node.node_id for n in result.tool_output.raw_output] == ids
    assert result.tool_output.content == passages


@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")
def test_with_a_query_mode_head_the_tool_reads_the_agents_query_after_the_conversation(
    embedder, query_embedder, caplog
):
    index = topic_index(embedder)
    retriever = NativeRetriever(index, NativeEmbedding(query_embedder), similarity_top_k=3, hybrid=None)
    messages = MULTI_TURN[0]
    call = ToolSelection(tool_id="c1", tool_name="search_documents", tool_kwargs={"query": "its best season"})

    async def run():
        replies = iter(
            [
                ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [call]}),
                ChatMessage(role="assistant", content="Done."),
            ]
        )
        llm = MockFunctionCallingLLMWithChatMemoryOfLastCall(response_generator=lambda messages, **kw: next(replies))
        agent = FunctionAgent(llm=llm, tools=[native_retrieval_tool(retriever)])
        mem = Memory.from_defaults(session_id="query-tool")
        mem.put_messages(chat_messages(messages[:-1]))
        handler = agent.run(messages[-1]["content"], memory=mem)
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        await handler
        return results

    with caplog.at_level("WARNING", logger="native_retriever"):
        asyncio.run(run())
        (result,) = asyncio.run(run())
    vector = query_embedder.embed_generated_query(messages, "its best season")
    assert [n.node.node_id for n in result.tool_output.raw_output] == [h.id for h in index.search(vector, k=3)[0]]
    said = [r.message for r in caplog.records if "query-mode head" in r.message]
    assert len(said) == 1 and "cannot be used" in said[0]  # the fallback is said once, not per call


def test_outside_a_workflow_memory_the_tool_searches_for_its_query(retriever):
    tool = native_retrieval_tool(retriever)
    question = MULTI_TURN[0][0]["content"]

    class NoMemory:
        class store:
            @staticmethod
            async def get(key, default=None):
                return default

    output = asyncio.run(tool.acall(ctx=NoMemory(), query=question))
    assert [n.node.node_id for n in output.raw_output] == expected(retriever, [MULTI_TURN[0][0]])[0]
    with pytest.raises(TypeError, match="needs a NativeRetriever"):
        native_retrieval_tool("not a retriever")
