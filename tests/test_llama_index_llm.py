"""NativeLLM: a LlamaIndex FunctionCallingLLM whose call is the native retrieval turn (the answer and passages of
native_turn, in chat, streaming and async), FunctionAgent on the local model with a kept cache per conversation,
tool calling through the chat template, and bad input."""

from __future__ import annotations

import asyncio

import pytest
from conftest import conversations, topic_index
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory
from llama_index.core.tools import FunctionTool
from test_tool_calls import TOOLS_TEMPLATE

import native_retriever.chat as chat_module
from native_retriever.agent import native_turn
from native_retriever.errors import ConversationError
from native_retriever.integrations.llama_index_llm import NativeLLM

CONVERSATIONS = [messages for _, messages, _ in conversations()][:3]
TOKENS = 10
agent_warnings = [
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
]


def chat_messages(messages: list[dict]) -> list[ChatMessage]:
    return [ChatMessage(role=m["role"], content=m["content"]) for m in messages]


@pytest.fixture(scope="module")
def index(embedder):
    return topic_index(embedder)


@pytest.fixture(scope="module")
def llm(embedder, index) -> NativeLLM:
    return NativeLLM(embedder, index=index, k=3, max_new_tokens=TOKENS)


def ids(response) -> list[str]:
    return [d["id"] for d in response.additional_kwargs["retrieved_documents"]]


def test_chat_streaming_and_async_give_native_turns_answer_and_passages(llm, embedder, index):
    for messages in CONVERSATIONS:
        turn = native_turn(embedder, index, messages, k=3, max_new_tokens=TOKENS)
        response = llm.chat(chat_messages(messages))
        assert response.message.content == turn.answer
        assert ids(response) == [h.id for h in turn.hits] and llm.last_documents[0]["id"] == turn.hits[0].id
        streamed = list(llm.stream_chat(chat_messages(messages)))
        assert "".join(r.delta for r in streamed).strip() == turn.answer
        assert asyncio.run(llm.achat(chat_messages(messages))).message.content == turn.answer

        async def collect(messages=messages):
            return [r async for r in await llm.astream_chat(chat_messages(messages))]

        assert "".join(r.delta for r in asyncio.run(collect())).strip() == turn.answer
    question = CONVERSATIONS[0][-1:]
    assert (
        llm.complete(question[0]["content"]).text
        == native_turn(embedder, index, question, max_new_tokens=TOKENS).answer
    )


@agent_warnings[0]
@agent_warnings[1]
def test_a_function_agent_runs_on_the_local_model_and_prefills_each_token_once(embedder, index):
    llm = NativeLLM(embedder, index=index, max_new_tokens=TOKENS)
    fresh = NativeLLM(embedder, index=index, max_new_tokens=TOKENS, max_conversations=0)
    agent = FunctionAgent(llm=llm, tools=[], system_prompt=None)
    memory = Memory.from_defaults(session_id="s1")

    async def run(question):
        return await agent.run(question, memory=memory)

    for turn, question in enumerate(["Tell me about the Mirravel river.", "When should I visit it?"]):
        answer = asyncio.run(run(question))
        history = asyncio.run(memory.aget_all())
        again = fresh.chat(history[:-1])
        assert str(answer).strip() == again.message.content
        assert llm.last_documents == again.additional_kwargs["retrieved_documents"]
        call = llm.last_call
        if turn == 0:
            assert call["prefilled_tokens"] == call["prompt_tokens"] == again.additional_kwargs["prompt_tokens"]
        else:  # the first turn's conversation came from the kept cache
            first = embedder.tokenize([{"role": "user", "content": "Tell me about the Mirravel river."}]).input_ids
            assert call["prefilled_tokens"] == call["prompt_tokens"] - len(first)


@pytest.fixture
def tools_llm(embedder, monkeypatch):
    """A NativeLLM with no index on a copy of the embedder whose template renders tools, decoding scripted."""
    import copy

    tools = copy.copy(embedder)
    tools.tokenizer = copy.deepcopy(embedder.tokenizer)
    tools.tokenizer.chat_template = TOOLS_TEMPLATE
    replies: list[str] = []
    prompts: list[str] = []

    def decode(model, tokenizer, input_ids, cache, max_new_tokens, min_new_tokens=0):
        prompts.append(tokenizer.decode(input_ids))
        yield from tokenizer(replies.pop(0), add_special_tokens=False)["input_ids"]

    monkeypatch.setattr(chat_module, "stream_greedy", decode)
    return NativeLLM(tools), replies, prompts


def lookup(name: str) -> str:
    """Look a place up by its name."""
    return f"{name} is a river with purple reeds."


@agent_warnings[0]
@agent_warnings[1]
def test_a_function_agent_calls_tools_on_the_local_model(tools_llm):
    llm, replies, prompts = tools_llm
    replies.extend(['<tool_call>{"name": "lookup", "arguments": {"name": "Mirravel"}}</tool_call>', "It has reeds."])
    agent = FunctionAgent(llm=llm, tools=[FunctionTool.from_defaults(lookup)])

    async def run():
        return await agent.run("Tell me about Mirravel.")

    answer = asyncio.run(run())
    assert str(answer).strip() == "It has reeds."
    assert '"name": "lookup"' in prompts[0]
    assert '<tool_call>\n{"name": "lookup", "arguments": {"name": "Mirravel"}}' in prompts[1]
    assert "<tool_response>\nMirravel is a river with purple reeds.\n</tool_response>" in prompts[1]


def test_a_malformed_call_and_impossible_tool_settings_raise_with_the_fix(tools_llm, embedder, index):
    llm, replies, _ = tools_llm
    tool = FunctionTool.from_defaults(lookup)
    replies.append('<tool_call>{"name": "lookup", "arguments": {"name": </tool_call>')
    response = llm.chat_with_tools([tool], user_msg="Where is Mirravel?")
    with pytest.raises(ValueError, match="cannot be read: The tool call is not JSON"):
        llm.get_tool_calls_from_response(response)
    with pytest.raises(ValueError, match="cannot be forced"):
        llm.chat_with_tools([tool], user_msg="Where?", tool_required=True)
    with pytest.raises(ConversationError, match="does not render tools"):
        NativeLLM(embedder).chat_with_tools([tool], user_msg="Where?")
    with pytest.raises(ConversationError, match="tool definitions or results"):
        NativeLLM(embedder, index=index).chat_with_tools([tool], user_msg="Where?")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        NativeLLM(embedder, index=index, k=0)
    with pytest.raises(ConversationError, match="No messages"):
        NativeLLM(embedder, index=index).chat([])


@pytest.mark.slow
def test_the_function_agent_example_retrieves_each_turns_passage_first_in_its_own_model_call():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # llama-index-workflows introspects the agent with inspect.getmembers, which trips pydantic's deprecated
    # attributes: those warnings come from module inspect, never from our code paths
    quiet = ["-W", "ignore::DeprecationWarning:inspect"]
    command = [sys.executable, "-W", "error::DeprecationWarning", *quiet]
    result = subprocess.run(
        [*command, "examples/llama_index_agent.py"], capture_output=True, text=True, env=env, cwd=root, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    script = json.loads((root / "native_retriever" / "resources" / "demo_conversation.json").read_text())
    turns = result.stdout.split("User: ")[1:]
    assert len(turns) == len(script["turns"]) == 4
    for number, (turn, expected_title) in enumerate(zip(turns, script["expected_topic_titles"], strict=True)):
        retrieved = [
            line.split("]", 1)[1].split("  (score")[0].strip() for line in turn.splitlines() if "(score" in line
        ]
        assert len(retrieved) == 3 and retrieved[0] == expected_title, turn
        prefilled, prompt = (int(x) for x in turn.split("prefilled ")[1].split(" prompt")[0].split(" of its "))
        assert (prefilled == prompt) if number == 0 else (prefilled < prompt), turn


def test_threads_and_asyncio_tasks_give_what_a_serial_call_gives(llm):
    from concurrent.futures import ThreadPoolExecutor

    serial = [llm.chat(chat_messages(m)).message.content for m in CONVERSATIONS]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda m: llm.chat(chat_messages(m)).message.content, CONVERSATIONS))

    async def tasks():
        return await asyncio.gather(*(llm.achat(chat_messages(m)) for m in CONVERSATIONS))

    assert threaded == serial
    assert [r.message.content for r in asyncio.run(tasks())] == serial


def test_tool_calls_other_llms_wrote_render_too():
    from llama_index.core.tools import ToolSelection

    from native_retriever.integrations.llama_index_llm import template_messages

    ours = {"id": "a", "name": "lookup", "arguments": {"name": "x"}}
    openai = {"id": "b", "type": "function", "function": {"name": "lookup", "arguments": '{"name": "y"}'}}
    selection = ToolSelection(tool_id="c", tool_name="lookup", tool_kwargs={"name": "z"})
    message = ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [ours, openai, selection]})
    [turn] = template_messages([message])
    assert [(c["id"], c["function"]["arguments"]) for c in turn["tool_calls"]] == [
        ("a", {"name": "x"}),
        ("b", {"name": "y"}),
        ("c", {"name": "z"}),
    ]
    with pytest.raises(ConversationError, match="role 'function'"):
        template_messages([ChatMessage(role="function", content="x")])
