"""One call of a local chat model, shared by the LangChain and LlamaIndex chat models.

:func:`start_call` readies the prompt: with an index, the native retrieval turn (one prefill of the conversation
gives the query vector and the cache, the passages are appended on it: :func:`~native_retriever.agent.native_prompt`);
without, the conversation (and any tools) through the chat template. :meth:`ChatCall.deltas` decodes greedily and
yields the answer's text as it grows; with tools, text that may be a tool call is held back and read by
:func:`~native_retriever.tool_calls.parse_tool_calls` at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .agent import NativePrompt, native_prompt, prefill, stream_greedy
from .errors import ConversationError, DimensionMismatchError
from .tool_calls import InvalidCall, ToolCall, holds_call, parse_tool_calls, prompt_ids, require_tools_template

if TYPE_CHECKING:
    from .bm25 import Hybrid
    from .embedder import NativeEmbedder
    from .index import VectorIndex
    from .turn_cache import ConversationCache

#: What to use instead when tools meet a model or an index that cannot take them.
TOOLS_ALTERNATIVE = (
    "For an agent with tools, use a model whose chat template renders tools (Qwen2.5, Llama-3.1) without an index, "
    "and retrieve natively beside it: LangChain's NativeRetrievalMiddleware or native_search_tool, LlamaIndex's "
    "NativeMemoryBlock or native_retrieval_tool."
)


@dataclass
class LocalLLM:
    """A local causal LM and its tokenizer with no head: all a chat model without an index needs (an LLM with no
    shipped head, such as Qwen2.5-Coder, answering and calling tools)."""

    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)


def as_local_llm(value: Any, index: Any) -> Any:
    """``value`` as the chat model's LLM: a ``NativeEmbedder`` (needed with an index), a :class:`LocalLLM`, or a
    ``(model, tokenizer)`` pair (made a :class:`LocalLLM`)."""
    if isinstance(value, tuple) and len(value) == 2:
        value = LocalLLM(*value)
    if index is not None and not hasattr(value, "head"):
        raise TypeError(
            "Retrieving from an index needs a NativeEmbedder (the LLM and its head), not a bare model and tokenizer."
        )
    if not (hasattr(value, "model") and hasattr(value, "tokenizer")):
        raise TypeError(f"Give a NativeEmbedder or a (model, tokenizer) pair, got {type(value).__name__}.")
    return value


@dataclass
class ChatCall:
    """A prompt ready to answer: ``prompt`` ids, a ``cache`` holding all of them but the last, the native turn
    (``ready``, None without an index) and, after :meth:`deltas`, the answer's ``text`` and ``answer_ids``."""

    prompt: list[int]
    cache: Any = field(repr=False)
    ready: NativePrompt | None
    tools: list[str]  # the bound tools' names (empty: no tools)
    text: str = ""
    answer_ids: list[int] = field(default_factory=list)

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens this call ran through the model (a kept conversation's tokens are not run again)."""
        return self.ready.prefilled_tokens if self.ready is not None else len(self.prompt)

    def metadata(self) -> dict[str, Any]:
        """``timings_ms``, ``prompt_tokens`` and ``prefilled_tokens`` (the hits are ``ready.hits``, for the framework
        to convert)."""
        timings = self.ready.timings if self.ready is not None else {}
        return {"timings_ms": timings, "prompt_tokens": len(self.prompt), "prefilled_tokens": self.prefilled_tokens}

    def deltas(
        self, model, tokenizer, max_new_tokens: int, min_new_tokens: int = 0, stop: Sequence[str] | None = None
    ) -> Iterator[str]:
        """The answer's new text as it is decoded (greedy), cut before the first ``stop`` string; a character split
        over tokens, and with tools anything that may be a tool call, is held back until it is whole."""
        shown = ""
        decoded = ""
        for token in stream_greedy(model, tokenizer, self.prompt, self.cache, max_new_tokens, min_new_tokens):
            self.answer_ids.append(token)
            decoded = tokenizer.decode(self.answer_ids, skip_special_tokens=True).lstrip()
            cut = min((i for i in (decoded.find(s) for s in stop or []) if i >= 0), default=-1)
            if cut >= 0:
                decoded = decoded[:cut]
            elif decoded.endswith("\ufffd") or (self.tools and holds_call(decoded)):
                continue
            if decoded[len(shown) :]:
                yield decoded[len(shown) :]
                shown = decoded
            if cut >= 0:
                break
        else:  # the answer ended: what a held-back split character became
            decoded = tokenizer.decode(self.answer_ids, skip_special_tokens=True).lstrip()
        self.text = decoded
        if not self.tools and decoded[len(shown) :]:
            yield decoded[len(shown) :]

    def tool_calls(self, shown: str) -> tuple[str, list[ToolCall], list[InvalidCall]]:
        """After :meth:`deltas` with tools: the text not yet shown (``shown`` was), the calls and the bad blocks."""
        content, calls, invalid = parse_tool_calls(self.text, self.tools)
        return (content[len(shown) :] if content.startswith(shown) else ""), calls, invalid

    def keep(self, conversations: ConversationCache | None) -> None:
        """After the answer: keep the conversation's cache for its next turn (native turns only)."""
        if self.ready is not None:
            self.ready.keep(conversations)


def check_retrieval(embedder: NativeEmbedder, index: VectorIndex) -> None:
    """Raise when ``embedder`` cannot retrieve from ``index`` in its prefill: another dimension, or a head that reads
    generated search queries rather than the conversation."""
    if index.dim != embedder.dimension:
        raise DimensionMismatchError(
            f"The index holds {index.dim}-dimensional vectors but the head outputs {embedder.dimension}: index the "
            "documents with the head's teacher (embedder.embed_documents), or load the head trained for that index."
        )
    mode = embedder.head.config.input_mode
    if mode != "context":
        raise ConversationError(
            f"This head reads generated search queries (input mode {mode!r}), not the conversation, so the model's "
            "prefill of the conversation cannot be its input. Use a context-mode head (the shipped default) here, "
            "or the query head in a search tool (native_search_tool / native_retrieval_tool)."
        )


def start_call(
    embedder: NativeEmbedder | LocalLLM,
    messages: list[dict],
    tools: list[dict] | None = None,
    index: VectorIndex | None = None,
    k: int = 3,
    hybrid: Hybrid | None = None,
    conversations: ConversationCache | None = None,
) -> ChatCall:
    """Ready one call on ``messages`` (chat-template dicts; ``tool_calls`` and role ``tool`` allowed without an
    index) and ``tools`` (JSON schemas)."""
    if not messages:
        raise ConversationError("No messages to answer; pass at least the user's message.")
    if index is not None:
        check_retrieval(embedder, index)
        if tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            raise ConversationError(
                "A chat model with an index retrieves in its prefill of the conversation, which a prompt with tool "
                "definitions or results is not (the head reads the conversation alone). " + TOOLS_ALTERNATIVE
            )
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        ready = native_prompt(embedder, index, plain, k, hybrid, conversations)
        return ChatCall(ready.prompt, ready.cache, ready, tools=[])
    if tools:
        require_tools_template(embedder.tokenizer, TOOLS_ALTERNATIVE)
    prompt = prompt_ids(embedder.tokenizer, messages, tools)
    names = [t.get("function", t).get("name") for t in tools or []]
    return ChatCall(prompt, prefill(embedder.model, prompt[:-1]), None, tools=names)
