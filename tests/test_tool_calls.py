"""Tool calling on a local chat model: tool calls read from the model's text (Qwen2.5 ``<tool_call>`` blocks,
Llama-3.1 JSON), malformed calls reported rather than raised, tools and results rendered through the chat template,
NativeChatModel.bind_tools inside a create_agent tool loop, and its refusals."""

from __future__ import annotations

import copy

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

import native_retriever.chat as chat_module
from native_retriever.errors import ConversationError
from native_retriever.integrations.langchain_chat import NativeChatModel
from native_retriever.tool_calls import holds_call, parse_tool_calls, prompt_ids, renders_tools

# A Qwen2.5-style template: tools in the system turn, calls as <tool_call> JSON, results as <tool_response>.
TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}
{% endif %}# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'user' or (m.role == 'assistant' and not m.tool_calls) %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% elif m.role == 'assistant' %}<|im_start|>assistant
{{ m.content }}
{%- for c in m.tool_calls %}
<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@tool
def lookup(name: str) -> str:
    """Look a place up by its name."""
    return f"{name} is a river with purple reeds."


# -- parsing ----------------------------------------------------------------------------------------------------
def test_qwen_blocks_and_llama_json_are_read_into_calls():
    text = 'Let me look.\n<tool_call>\n{"name": "lookup", "arguments": {"name": "Mirravel"}}\n</tool_call>'
    content, calls, invalid = parse_tool_calls(text)
    assert content == "Let me look." and not invalid
    assert [(c.name, c.arguments) for c in calls] == [("lookup", {"name": "Mirravel"})]
    assert calls[0].id.startswith("call_")

    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": "{\\"x\\": 1}"}'
    content, calls, invalid = parse_tool_calls(two)  # the second block is cut off by the token limit: still read
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("a", {}), ("b", {"x": 1})]
    assert len({c.id for c in calls}) == 2

    content, calls, _ = parse_tool_calls('{"name": "lookup", "parameters": {"name": "Selvane"}}')
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("lookup", {"name": "Selvane"})]
    # an answer that merely is JSON is not a call
    assert parse_tool_calls('{"answer": 42}') == ('{"answer": 42}', [], [])


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"name": "lookup", "arguments": {"name": ', "not JSON"),
        ('{"arguments": {}}', '"name"'),
        ('["lookup"]', '"name"'),
        ('{"name": "lookup", "arguments": [1, 2]}', "a list, not an object"),
        ('{"name": "lookup", "arguments": "{oops"}', "arguments that are not JSON"),
    ],
)
def test_a_malformed_call_is_reported_not_raised(body, error):
    content, calls, invalid = parse_tool_calls(f"<tool_call>{body}</tool_call>")
    assert content == "" and calls == []
    assert len(invalid) == 1 and error in invalid[0].error and invalid[0].text == body.strip()
    assert invalid[0].name == ("lookup" if '"name": "lookup"' in body else None)


def test_streamed_text_is_held_back_while_it_may_be_a_call():
    assert holds_call("<tool_") and holds_call("Sure <tool_call>{") and holds_call(' {"name"')
    assert not holds_call("The river is purple.") and not holds_call("")


def test_tools_and_results_render_through_the_template(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    assert not renders_tools(tokenizer)
    tokenizer.chat_template = TOOLS_TEMPLATE
    assert renders_tools(tokenizer)
    schema = {"type": "function", "function": {"name": "lookup", "description": "Look up.", "parameters": {}}}
    messages = [
        {"role": "user", "content": "Where is Mirravel?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "id": "c1", "function": {"name": "lookup", "arguments": {"name": "Mirravel"}}}
            ],
        },
        {"role": "tool", "content": "Near Dunhollow.", "tool_call_id": "c1"},
    ]
    text = tokenizer.decode(prompt_ids(tokenizer, messages, [schema]))
    assert '"name": "lookup"' in text and '{"name": "Mirravel"}' in text
    assert "<tool_response>\nNear Dunhollow.\n</tool_response>" in text and text.endswith("<|im_start|>assistant\n")


# -- NativeChatModel.bind_tools -------------------------------------------------------------------------------
@pytest.fixture
def tools_embedder(embedder):
    """The test embedder with a copy of its tokenizer that renders tools."""
    tools = copy.copy(embedder)
    tools.tokenizer = copy.deepcopy(embedder.tokenizer)
    tools.tokenizer.chat_template = TOOLS_TEMPLATE
    return tools


@pytest.fixture
def scripted(monkeypatch, tools_embedder):
    """Decoding replaced by scripted replies (one per model call); records each prompt's text."""
    replies: list[str] = []
    prompts: list[str] = []

    def decode(model, tokenizer, input_ids, cache, max_new_tokens, min_new_tokens=0):
        prompts.append(tokenizer.decode(input_ids))
        yield from tokenizer(replies.pop(0), add_special_tokens=False)["input_ids"]

    monkeypatch.setattr(chat_module, "stream_greedy", decode)
    return replies, prompts


def test_a_call_in_the_answer_becomes_tool_calls_and_never_streams_as_text(tools_embedder, scripted):
    replies, prompts = scripted
    model = NativeChatModel(embedder=tools_embedder).bind_tools([lookup])
    call = 'Checking.\n<tool_call>\n{"name": "lookup", "arguments": {"name": "Mirravel"}}\n</tool_call>'
    replies.extend([call, call])
    message = model.invoke([HumanMessage("Where is the Mirravel river?")])
    assert message.content == "Checking."
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("lookup", {"name": "Mirravel"})]
    assert '"name": "lookup"' in prompts[0]  # the tool's schema was in the prompt
    chunks = list(model.stream([HumanMessage("Where is the Mirravel river?")]))
    assert "<tool_call>" not in "".join(c.content for c in chunks)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("lookup", {"name": "Mirravel"})]


def test_a_malformed_call_reaches_the_agent_as_an_invalid_tool_call(tools_embedder, scripted):
    replies, _ = scripted
    replies.append('<tool_call>{"name": "lookup", "arguments": {"name": </tool_call>')
    message = NativeChatModel(embedder=tools_embedder).bind_tools([lookup]).invoke("Where is Mirravel?")
    assert message.tool_calls == []
    [bad] = message.invalid_tool_calls
    assert bad["name"] == "lookup" and bad["args"] == '{"name": "lookup", "arguments": {"name":'
    assert "not JSON" in bad["error"]


def test_a_create_agent_tool_loop_runs_on_the_local_model(tools_embedder, scripted):
    replies, prompts = scripted
    replies.extend(['<tool_call>{"name": "lookup", "arguments": {"name": "Mirravel"}}</tool_call>', "It has reeds."])
    agent = create_agent(NativeChatModel(embedder=tools_embedder), tools=[lookup])
    state = agent.invoke({"messages": [{"role": "user", "content": "Tell me about Mirravel."}]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert state["messages"][-1].content == "It has reeds."
    # the second call saw the call and its result through the template
    assert '<tool_call>\n{"name": "lookup", "arguments": {"name": "Mirravel"}}' in prompts[1]
    assert "<tool_response>\nMirravel is a river with purple reeds.\n</tool_response>" in prompts[1]


def test_tools_are_refused_where_they_cannot_work(embedder, tools_embedder):
    from conftest import topic_index

    with pytest.raises(ConversationError, match="does not render tools.*NativeRetrievalMiddleware"):
        NativeChatModel(embedder=embedder).bind_tools([lookup])
    with pytest.raises(ConversationError, match="retrieves in its prefill.*native_search_tool"):
        NativeChatModel(embedder=tools_embedder, index=topic_index(embedder)).bind_tools([lookup])
    with pytest.raises(ValueError, match="tool_choice='any' cannot be enforced"):
        NativeChatModel(embedder=tools_embedder).bind_tools([lookup], tool_choice="any")
    retrieving = NativeChatModel(embedder=embedder, index=topic_index(embedder))
    with pytest.raises(ConversationError, match="tool definitions or results"):
        retrieving.invoke(
            [
                HumanMessage("Hi"),
                AIMessage("", tool_calls=[{"name": "x", "args": {}, "id": "1"}]),
                ToolMessage("result", tool_call_id="1"),
            ]
        )
    with pytest.raises(ConversationError, match="No messages"):
        NativeChatModel(embedder=embedder).invoke([])


def test_an_index_or_head_the_chat_model_cannot_retrieve_with_is_refused(embedder, tiny_head_factory, teacher):
    from native_retriever import VectorIndex
    from native_retriever.embedder import NativeEmbedder
    from native_retriever.errors import DimensionMismatchError
    from native_retriever.integrations.llama_index_llm import NativeLLM

    other = VectorIndex(16)
    other.add(["a"], __import__("numpy").ones((1, 16), dtype="float32"), ["text"])
    with pytest.raises(DimensionMismatchError, match="16-dimensional vectors but the head outputs 384"):
        NativeChatModel(embedder=embedder, index=other).invoke("Where is Mirravel?")
    with pytest.raises(DimensionMismatchError, match="embed_documents"):
        NativeLLM(embedder, index=other).complete("Where is Mirravel?")
    query_head = NativeEmbedder(
        embedder.model, embedder.tokenizer, head=tiny_head_factory("attention", input_mode="query"), teacher=teacher
    )
    from conftest import topic_index

    with pytest.raises(ConversationError, match="reads generated search queries.*native_search_tool"):
        NativeChatModel(embedder=query_head, index=topic_index(embedder)).invoke("Where is Mirravel?")


@pytest.mark.slow
def test_real_qwen_calls_a_tool_in_a_create_agent_loop_and_through_llama_index():
    from test_qwen import QWEN_INSTALLED

    if not QWEN_INSTALLED:
        pytest.skip("the Qwen wheels are not installed")
    from llama_index.core.tools import FunctionTool

    from native_retriever.integrations.llama_index_llm import NativeLLM
    from native_retriever.models import QWEN_LLM, load_llm

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"It is sunny and 21 degrees in {city}."

    model, tokenizer = load_llm(QWEN_LLM)  # no head: a local chat model that calls tools
    chat = NativeChatModel(embedder=(model, tokenizer), max_new_tokens=64)
    state = create_agent(chat, tools=[get_weather]).invoke(
        {"messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    )
    first = state["messages"][1]
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert state["messages"][2].content == "It is sunny and 21 degrees in Paris."
    llm = NativeLLM((model, tokenizer), max_new_tokens=64)
    response = llm.chat_with_tools(
        [FunctionTool.from_defaults(get_weather.func)], user_msg="What is the weather in Paris?"
    )
    [call] = llm.get_tool_calls_from_response(response)
    assert (call.tool_name, call.tool_kwargs) == ("get_weather", {"city": "Paris"})
