"""NativeChatModel: the model call is the retrieval (one prefill), the same passages and answer as native_turn,
streaming, async, threads, inside create_agent, and bad input."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import conversations, topic_index
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

from native_retriever import VectorIndex
from native_retriever.agent import native_turn
from native_retriever.errors import ConversationError
from native_retriever.integrations.langchain import to_chat_messages
from native_retriever.integrations.langchain_chat import NativeChatModel

CONVERSATIONS = [messages for _, messages, _ in conversations()][:4]
TOKENS = 12


def as_langchain(messages: list[dict]) -> list:
    kinds = {"user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]


@pytest.fixture(scope="module")
def index(embedder) -> VectorIndex:
    index = topic_index(embedder)
    return index


@pytest.fixture(scope="module")
def chat(embedder, index) -> NativeChatModel:
    return NativeChatModel(embedder=embedder, index=index, k=3, max_new_tokens=TOKENS)


def _scripted(*replies):
    """A chat model that answers with ``replies`` in turn (GenericFakeChatModel, with tools bound as a no-op)."""
    from langchain_core.language_models import GenericFakeChatModel

    class Scripted(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    return Scripted(messages=iter([r if isinstance(r, AIMessage) else AIMessage(r) for r in replies]))


def ids(message) -> list[str]:
    return [d["id"] for d in message.response_metadata["retrieved_documents"]]


def test_an_answer_is_native_turns_answer_on_the_passages_native_turn_retrieves(chat, embedder, index):
    for messages in CONVERSATIONS:
        turn = native_turn(embedder, index, messages, k=3, max_new_tokens=TOKENS)
        message = chat.invoke(as_langchain(messages))
        assert ids(message) == [h.id for h in turn.hits]
        assert [d["metadata"]["score"] for d in message.response_metadata["retrieved_documents"]] == pytest.approx(
            [h.score for h in turn.hits]
        )
        assert message.content == turn.answer
        assert message.usage_metadata["input_tokens"] == len(turn.prompt_ids)
        assert set(message.response_metadata["timings_ms"]) == {"prefill", "head", "search", "passages_prefill"}


def test_streaming_gives_the_same_answer_token_by_token(chat):
    messages = as_langchain(CONVERSATIONS[1])
    chunks = list(chat.stream(messages))
    assert chunks[0].response_metadata["retrieved_documents"] and len(chunks) > 3
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    invoked = chat.invoke(messages)
    assert whole.content.strip() == invoked.content and ids(whole) == ids(invoked)


def test_async_calls_and_threads_give_what_a_serial_call_gives(chat):
    serial = [chat.invoke(as_langchain(m)) for m in CONVERSATIONS]

    async def both():
        invoked = await asyncio.gather(*(chat.ainvoke(as_langchain(m)) for m in CONVERSATIONS))
        streamed = []
        for m in CONVERSATIONS:
            parts = [chunk async for chunk in chat.astream(as_langchain(m))]
            streamed.append("".join(p.content for p in parts).strip())
        return invoked, streamed

    invoked, streamed = asyncio.run(both())
    assert [m.content for m in invoked] == [m.content for m in serial] == streamed
    assert [ids(m) for m in invoked] == [ids(m) for m in serial]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda m: chat.invoke(as_langchain(m)), CONVERSATIONS * 2))
    assert [(m.content, ids(m)) for m in threaded] == [(m.content, ids(m)) for m in serial * 2]


def test_stop_words_end_the_answer(chat):
    full = chat.invoke(as_langchain(CONVERSATIONS[0])).content
    assert len(full) > 4
    stop = full[2:4]
    cut = chat.invoke(as_langchain(CONVERSATIONS[0]), stop=[stop]).content
    assert stop not in cut and full.startswith(cut)


def test_it_runs_as_the_model_of_a_create_agent_agent(chat):
    agent = create_agent(chat, system_prompt="Answer in one sentence.")
    state = agent.invoke({"messages": as_langchain(CONVERSATIONS[2])})
    assert isinstance(state["messages"][-1], AIMessage) and ids(state["messages"][-1])


def test_tools_and_bad_settings_are_refused_with_the_fix(chat, embedder, index):
    @tool
    def lookup(name: str) -> str:
        """Look a name up."""
        return name

    with pytest.raises(ConversationError, match="does not render tools.*NativeRetrievalMiddleware"):
        chat.bind_tools([lookup])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        NativeChatModel(embedder=embedder, index=index, k=0)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        NativeChatModel(embedder=embedder, index=index, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_conversations must be an integer >= 0"):
        NativeChatModel(embedder=embedder, index=index, max_conversations=-1)


def test_every_langchain_way_in_retrieves_the_same_passages(chat, embedder, index):
    """The middleware, the chat model, the search tool and NativeEmbedder + VectorIndex directly: same ids, same
    order, on the same conversation."""
    from langchain_core.messages import ToolMessage

    from native_retriever.conversation import lexical_queries
    from native_retriever.integrations.langchain import NativeEmbeddings, NativeRetriever
    from native_retriever.integrations.langchain_agents import NativeRetrievalMiddleware, native_search_tool

    retriever = NativeRetriever(embeddings=NativeEmbeddings(embedder), store=index, k=3)
    for messages in CONVERSATIONS:
        direct = [
            h.id for h in index.search(embedder.embed_conversation(messages), k=3, texts=[lexical_queries(messages)])[0]
        ]
        through_chat = ids(chat.invoke(as_langchain(messages)))
        middleware = NativeRetrievalMiddleware(retriever).before_model({"messages": as_langchain(messages)}, None)
        call = {"name": "search_documents", "args": {"query": "x"}, "id": "c", "type": "tool_call"}
        tool_agent = create_agent(
            _scripted(AIMessage("", tool_calls=[call]), "ok"), tools=[native_search_tool(retriever)]
        )
        state = tool_agent.invoke({"messages": as_langchain(messages)})
        through_tool = [d.id for d in next(m for m in state["messages"] if isinstance(m, ToolMessage)).artifact]
        assert direct == through_chat == [d["id"] for d in middleware["retrieved_documents"]] == through_tool


def test_a_checkpointed_thread_prefills_only_each_turns_new_tokens(embedder, index):
    from langgraph.checkpoint.memory import InMemorySaver

    kept = NativeChatModel(embedder=embedder, index=index, max_new_tokens=TOKENS)
    fresh = NativeChatModel(embedder=embedder, index=index, max_new_tokens=TOKENS, max_conversations=0)
    agent = create_agent(kept, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    questions = ["Tell me about the Mirravel river.", "When should I visit it?", "What grows there?"]
    for turn, question in enumerate(questions):
        state = agent.invoke({"messages": [{"role": "user", "content": question}]}, config)
        answer = state["messages"][-1]
        usage, metadata = answer.usage_metadata, answer.response_metadata
        if turn == 0:
            assert metadata["prefilled_tokens"] == usage["input_tokens"]
        else:  # the previous turn's conversation comes from the kept cache
            previous = embedder.tokenize(to_chat_messages(state["messages"][:-3])).input_ids
            assert metadata["prefilled_tokens"] == usage["input_tokens"] - len(previous)
        again = fresh.invoke(state["messages"][:-1])
        assert again.response_metadata["prefilled_tokens"] == again.usage_metadata["input_tokens"]
        assert again.content == answer.content and ids(again) == ids(answer)
