"""A LlamaIndex ``FunctionCallingLLM`` for a local Hugging Face causal LM whose model call is the retrieval.

:class:`NativeLLM` answers a chat the way :func:`~native_retriever.agent.native_turn` does: one prefill of the
conversation gives the query vector (the head reads that prefill's states) and the KV cache, the passages found are
appended on the cache and the answer continues from it, so ``FunctionAgent`` and ``AgentWorkflow`` run on the local
model and retrieve with no tool call and no second pass::

    from llama_index.core.agent.workflow import FunctionAgent

    llm = NativeLLM(NativeEmbedder(model, tokenizer), index=index, k=3)
    agent = FunctionAgent(llm=llm, tools=[])
    answer = await agent.run("Who discovered polonium?", memory=memory)
    llm.last_documents   # [{"id", "text", "score", "metadata"}] of the last answer; also in each ChatResponse

Each recent conversation's cache is kept between its turns (``max_conversations``, see
:mod:`native_retriever.turn_cache`). Without an index it is a plain local chat model with tool calling for models
whose chat template renders tools (Qwen2.5, Llama-3.1): ``<tool_call>`` JSON becomes ``ToolSelection``s, tool
results are rendered back through the template; pair it with ``NativeMemoryBlock`` or ``native_retrieval_tool`` to
retrieve natively. Decoding is greedy; async calls run in a worker thread.

Needs the ``llama-index`` extra: ``pip install "native-retriever[llama-index]"``.
"""
# ruff: noqa: E402  (the imports below must come after the check that names the extra)

from __future__ import annotations

from . import require

require("llama_index.core", "llama-index")

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from ..bm25 import DEFAULT_HYBRID
from ..chat import as_local_llm, start_call
from ..checks import check_count
from ..errors import ConversationError
from ..turn_cache import ConversationCache

__all__ = ["NativeLLM"]

_END = object()


def _call(value: Any) -> dict:
    """One tool call as ``{"id", "name", "arguments"}``: ours, a ``ToolSelection``, or OpenAI's ``function`` form."""
    if isinstance(value, ToolSelection):
        return {"id": value.tool_id, "name": value.tool_name, "arguments": value.tool_kwargs}
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        function = value["function"]
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        return {"id": value.get("id"), "name": function.get("name"), "arguments": arguments}
    if isinstance(value, dict) and "name" in value:
        return {"id": value.get("id"), "name": value["name"], "arguments": value.get("arguments") or {}}
    raise ConversationError(f"A tool call of type {type(value).__name__} cannot be rendered; give a ToolSelection.")


def template_messages(messages: Sequence[ChatMessage]) -> list[dict]:
    """LlamaIndex chat messages as chat-template dicts: tool calls (``additional_kwargs["tool_calls"]`` or
    ``ToolCallBlock``s) as ``tool_calls``, tool results as role ``tool``."""
    out = []
    for position, message in enumerate(messages):
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        if role not in ("system", "user", "assistant", "tool"):
            raise ConversationError(f"Message {position} has role {role!r}; give system, user, assistant or tool.")
        turn: dict[str, Any] = {"role": role, "content": message.content or ""}
        calls = [_call(c) for c in message.additional_kwargs.get("tool_calls") or []]
        calls += [
            {"id": b.tool_call_id, "name": b.tool_name, "arguments": b.tool_kwargs}
            for b in message.blocks
            if isinstance(b, ToolCallBlock)
        ]
        if role == "assistant" and calls:
            turn["tool_calls"] = [
                {"type": "function", "id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ]
        if role == "tool":
            turn["tool_call_id"] = message.additional_kwargs.get("tool_call_id")
        out.append(turn)
    return out


class NativeLLM(FunctionCallingLLM):
    """A LlamaIndex LLM over ``embedder``'s model that retrieves from ``index`` (a
    :class:`~native_retriever.index.VectorIndex`; None: no retrieval) with its own prefill of the conversation.
    ``embedder``: a ``NativeEmbedder``, or without an index a ``(model, tokenizer)`` pair (an LLM with no head).

    ``k`` passages per answer, searched with ``hybrid``; at most ``max_new_tokens`` answer tokens, at least
    ``min_new_tokens``, greedy; ``max_conversations`` conversations' caches kept between turns (0: none). Each
    ``ChatResponse.additional_kwargs`` holds ``retrieved_documents``, ``timings_ms`` and ``prefilled_tokens``.
    """

    embedder: Any = Field(exclude=True, description="The NativeEmbedder whose model answers.")
    index: Any = Field(default=None, exclude=True, description="The VectorIndex to retrieve from, or None.")
    k: int = 3
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    hybrid: Any = Field(default=DEFAULT_HYBRID, exclude=True)
    max_conversations: int = 4
    _conversations: ConversationCache = PrivateAttr()
    _last_call: dict = PrivateAttr(default_factory=dict)

    def __init__(self, embedder: Any, index: Any = None, **kwargs: Any) -> None:
        super().__init__(embedder=as_local_llm(embedder, index), index=index, **kwargs)
        self._conversations = ConversationCache(self.max_conversations)

    @field_validator("k", "max_new_tokens", "min_new_tokens", "max_conversations")
    @classmethod
    def _counts(cls, value: int, info: Any) -> int:
        return check_count(value, info.field_name, 1 if info.field_name in ("k", "max_new_tokens") else 0)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises the class under."""
        return "NativeLLM"

    @property
    def metadata(self) -> LLMMetadata:
        """A chat and function-calling model (tools need a template that renders them)."""
        model = self.embedder.model
        return LLMMetadata(
            context_window=int(getattr(model.config, "max_position_embeddings", 2048)),
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=str(model.name_or_path),
        )

    @property
    def last_documents(self) -> list[dict]:
        """The passages of the last answer (``id``, ``text``, ``score``, ``metadata``; empty without an index)."""
        return list(self._last_call.get("retrieved_documents", []))

    @property
    def last_call(self) -> dict:
        """What the last call's responses carry in ``additional_kwargs``: ``retrieved_documents``, ``timings_ms``,
        ``prompt_tokens`` and ``prefilled_tokens``."""
        return dict(self._last_call)

    # -- chat ------------------------------------------------------------------------------------------------
    def _responses(self, messages: Sequence[ChatMessage], tools: list[dict] | None) -> Iterator[ChatResponse]:
        model, tokenizer = self.embedder.model, self.embedder.tokenizer
        call = start_call(
            self.embedder, template_messages(messages), tools, self.index, self.k, self.hybrid, self._conversations
        )
        extra: dict[str, Any] = call.metadata()
        if call.ready is not None:
            extra["retrieved_documents"] = [
                {"id": h.id, "text": h.text, "score": h.score, "metadata": dict(h.metadata)} for h in call.ready.hits
            ]
        self._last_call = extra
        text = ""
        try:
            for delta in call.deltas(model, tokenizer, self.max_new_tokens, self.min_new_tokens):
                text += delta
                yield ChatResponse(
                    message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta, additional_kwargs=extra
                )
        finally:
            call.keep(self._conversations)
        if call.tools:
            rest, calls, invalid = call.tool_calls(text)
            found = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]
            bad = [{"id": c.id, "name": c.name, "text": c.text, "error": c.error} for c in invalid]
            message = ChatMessage(
                role=MessageRole.ASSISTANT,
                content=(text + rest).strip(),
                additional_kwargs={"tool_calls": found, "invalid_tool_calls": bad} if found or bad else {},
            )
            yield ChatResponse(message=message, delta=rest, additional_kwargs=extra)
        elif not text:
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=""), additional_kwargs=extra)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """The answer as it is decoded: each response holds the text so far and its ``delta``."""
        return self._responses(messages, kwargs.get("tools"))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """The whole answer."""
        *_, last = self._responses(messages, kwargs.get("tools"))
        last.message.content = (last.message.content or "").strip()
        return last

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` in a worker thread."""
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat`, each step in a worker thread."""
        responses = self._responses(messages, kwargs.get("tools"))

        async def gen() -> ChatResponseAsyncGen:
            while (item := await asyncio.to_thread(next, responses, _END)) is not _END:
                yield item

        return gen()

    # -- completion: the prompt as one user message ------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The answer to ``prompt`` as one user message."""
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """:meth:`complete`, streamed."""
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete`."""
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`."""
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # -- tools -------------------------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The chat kwargs for ``chat_with_tools``: the messages and the tools' JSON schemas (none: a plain chat)."""
        if tool_required or tool_choice not in (None, "auto"):
            raise ValueError(
                "NativeLLM decodes greedily, with no constrained decoding, so a tool call cannot be forced "
                f"(tool_required={tool_required!r}, tool_choice={tool_choice!r}); say in the prompt which tool to call."
            )
        messages = list(chat_history or [])
        if user_msg is not None:
            is_text = isinstance(user_msg, str)
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if is_text else user_msg)
        schemas = [tool.metadata.to_openai_tool() for tool in tools]  # start_call checks the template renders them
        return {"messages": messages, "tools": schemas or None, **kwargs}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The calls the model wrote; a malformed ``<tool_call>`` raises ValueError with what was wrong."""
        extra = response.message.additional_kwargs
        bad = extra.get("invalid_tool_calls") or []
        if bad:
            raise ValueError(
                f"The model wrote a tool call that cannot be read: {bad[0]['error']} ({bad[0]['text']!r}). "
                "Say in the system prompt how to call the tools, or use a larger model."
            )
        calls = [
            ToolSelection(tool_id=c["id"], tool_name=c["name"], tool_kwargs=c["arguments"])
            for c in extra.get("tool_calls") or []
        ]
        if not calls and error_on_no_tool_call:
            raise ValueError(f"Expected a tool call, but the model answered: {response.message.content!r}")
        return calls
