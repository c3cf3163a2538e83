"""Tool calling for local chat models whose chat template renders tools.

Tools go to the template as JSON schemas (``{"type": "function", "function": {"name", "description",
"parameters"}}``), assistant calls as ``tool_calls`` and results as ``tool`` messages, the way Hugging Face chat
templates take them. The model's text is parsed back into calls, leniently, as small models write them: Qwen2.5 /
Hermes style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (the closing tag may be cut off),
or an answer that is nothing but one JSON object ``{"name": ..., "arguments"|"parameters": {...}}`` naming a bound
tool (Llama-3.1 style; Qwen2.5-Coder-0.5B writes it in a ```json fence, sometimes a closing brace short, which is
added back). A tagged block that is not such an object becomes an :class:`InvalidCall` (the agent framework reports
it to the model) rather than an error.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .conversation import render_chat
from .errors import ConversationError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|$)", re.S)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*(?:```)?$", re.S)


@dataclass
class ToolCall:
    """A call the model wrote: the tool's ``name``, its ``arguments`` and an ``id`` for the tool's result."""

    name: str
    arguments: dict[str, Any]
    id: str


@dataclass
class InvalidCall:
    """A ``<tool_call>`` block that could not be read: its ``text``, what was wrong (``error``) and an ``id``."""

    text: str
    error: str
    id: str
    name: str | None = None


def new_call_id() -> str:
    """A fresh id for a tool call (``call_`` and 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders tool definitions (it reads a ``tools`` variable)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(template.values())
    return re.search(r"\btools\b", template) is not None


def require_tools_template(tokenizer, alternative: str) -> None:
    """Raise ConversationError, naming ``alternative``, when the chat template cannot render tools."""
    if not renders_tools(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or "this LLM"
        raise ConversationError(
            f"The chat template of {name!r} does not render tools, so the model cannot be asked to call them. "
            f"{alternative}"
        )


def _load(body: str) -> Any:
    """``body`` as JSON; an object missing its last closing braces gets them back."""
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        missing = body.count("{") - body.count("}")
        if body.lstrip().startswith("{") and 0 < missing <= 2:
            try:
                return json.loads(body + "}" * missing)
            except json.JSONDecodeError:
                pass
        raise


def _read_call(body: str) -> ToolCall | str:
    """The call in a block's JSON, or what is wrong with it."""
    try:
        data = _load(body)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return 'not an object with a "name" string'
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return f"arguments that are not JSON ({exc.msg})"
    if not isinstance(arguments, dict):
        return f"arguments that are a {type(arguments).__name__}, not an object"
    return ToolCall(data["name"], arguments, new_call_id())


def parse_tool_calls(text: str, names: Sequence[str] | None = None) -> tuple[str, list[ToolCall], list[InvalidCall]]:
    """The text outside calls (stripped), the calls read, and the tagged blocks that could not be read. An untagged
    answer is a call only when it is one JSON object naming a tool in ``names`` (any name when None)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidCall] = []
    bodies = [m.group(1).strip() for m in _BLOCK.finditer(text)]
    content = _BLOCK.sub("", text).strip()
    fenced = _FENCE.match(content)
    whole = fenced.group(1) if fenced else content
    if not bodies and whole.startswith("{"):
        read = _read_call(whole)  # the whole answer is the call (Llama-3.1 style, or fenced)
        if isinstance(read, ToolCall) and (names is None or read.name in names):
            return "", [read], []
    for body in bodies:
        read = _read_call(body)
        if isinstance(read, ToolCall):
            calls.append(read)
        else:
            name = re.search(r'"name"\s*:\s*"([^"]+)"', body)
            invalid.append(InvalidCall(body, f"The tool call is {read}.", new_call_id(), name and name.group(1)))
    return content, calls, invalid


def holds_call(text: str) -> bool:
    """Whether streamed text may be (the start of) a tool call, so it should be held back rather than shown."""
    if CALL_OPEN in text or text.lstrip().startswith(("{", "`")):
        return True
    return any(text.endswith(CALL_OPEN[:n]) for n in range(1, len(CALL_OPEN)))  # perhaps a call's first characters


def prompt_ids(tokenizer, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> list[int]:
    """Token ids of ``messages`` (roles ``system``/``user``/``assistant`` with optional ``tool_calls``/``tool``)
    and ``tools`` rendered by the chat template, with the generation prompt."""
    text = render_chat(tokenizer, list(messages), tools=list(tools) if tools else None)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
