"""A LangChain chat model for a local Hugging Face causal LM whose model call is the retrieval.

:class:`NativeChatModel` answers a conversation the way :func:`~native_retriever.agent.native_turn` does: one
prefill of the conversation gives the query vector (the head reads that prefill's states) and the KV cache; the
passages found are appended on the cache as a tool call and result in the model's chat template, and the answer
continues from it. No second model, no second pass over the conversation::

    chat = NativeChatModel(embedder=NativeEmbedder(model, tokenizer), index=index, k=3)
    message = chat.invoke([HumanMessage("Who discovered polonium?")])
    message.response_metadata["retrieved_documents"]   # [{"id", "page_content", "metadata"}]
    for chunk in chat.stream(messages): ...            # tokens as they are decoded; ainvoke / astream too

Each recent conversation's cache is kept between its turns (``max_conversations``, see
:mod:`native_retriever.turn_cache`): the next turn prefills only the previous answer and the new message.

Without an index it is a plain local chat model, with tool calling (``bind_tools``) for models whose chat template
renders tools (Qwen2.5, Llama-3.1): ``<tool_call>`` JSON is parsed into ``AIMessage.tool_calls``, ``ToolMessage``s
are rendered back through the template. Pair it with ``NativeRetrievalMiddleware`` or ``native_search_tool`` for a
tool-calling agent that retrieves natively. It is a ``BaseChatModel``: callbacks, tracing, ``create_agent`` and
LangGraph work as for any chat model. Decoding is greedy.

Needs the ``langchain`` extra: ``pip install "native-retriever[langchain]"``.
"""
# ruff: noqa: E402  (the imports below must come after the check that names the extra)

from __future__ import annotations

from . import require

require("langchain_core", "langchain")

import json
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, PrivateAttr, field_validator

from ..bm25 import DEFAULT_HYBRID, Hybrid
from ..chat import TOOLS_ALTERNATIVE, ChatCall, as_local_llm, start_call
from ..checks import check_count
from ..errors import ConversationError
from ..index import VectorIndex
from ..tool_calls import require_tools_template
from ..turn_cache import ConversationCache
from .langchain import _check_k, document_record, hit_document, message_text, to_chat_messages

__all__ = ["NativeChatModel"]


def tool_chat_messages(messages: Sequence[BaseMessage]) -> list[dict]:
    """LangChain messages as chat-template dicts, tool calls (``tool_calls``) and results (role ``tool``) kept."""
    out: list[dict] = []
    for position, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            text = message_text(message.content, position)
            out.append({"role": "tool", "content": text, "tool_call_id": message.tool_call_id, "name": message.name})
        elif isinstance(message, AIMessage) and message.tool_calls:
            calls = [
                {"type": "function", "id": c["id"], "function": {"name": c["name"], "arguments": c["args"]}}
                for c in message.tool_calls
            ]
            out.append({"role": "assistant", "content": message_text(message.content, position), "tool_calls": calls})
        else:
            out.extend(to_chat_messages([message]))
    return out


class NativeChatModel(BaseChatModel):
    """A chat model over ``embedder``'s LLM that retrieves from ``index`` with its own prefill of the conversation.

    ``embedder``: a ``NativeEmbedder``, or without an index a ``(model, tokenizer)`` pair (an LLM with no head).

    ``k`` passages per answer, searched with ``hybrid`` (:class:`~native_retriever.bm25.Hybrid`; None: the vector
    alone); ``index=None``: no retrieval (a plain local chat model, tools allowed). At most ``max_new_tokens`` answer
    tokens, at least ``min_new_tokens``, greedy. ``max_conversations``: how many conversations' caches are kept
    between turns (0: none). The answer's ``response_metadata`` holds ``retrieved_documents`` (``Document`` fields
    as dicts, the score in ``metadata["score"]``), ``timings_ms`` and ``prefilled_tokens`` (prompt tokens this call
    ran through the model; the prompt's length is ``usage_metadata["input_tokens"]``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embedder: Any
    index: VectorIndex | None = None
    k: int = 3
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    hybrid: Hybrid | None = DEFAULT_HYBRID
    max_conversations: int = 4
    _conversations: ConversationCache = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        """Check the LLM and set up the kept conversations' caches."""
        self.embedder = as_local_llm(self.embedder, self.index)
        self._conversations = ConversationCache(self.max_conversations)

    @field_validator("k")
    @classmethod
    def _k(cls, value: int) -> int:
        return _check_k(value)

    @field_validator("max_new_tokens", "min_new_tokens", "max_conversations")
    @classmethod
    def _counts(cls, value: int, info: Any) -> int:
        return check_count(value, info.field_name, 1 if info.field_name == "max_new_tokens" else 0)

    @property
    def _llm_type(self) -> str:
        return "native-retriever-huggingface"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.embedder.model.name_or_path, "k": self.k, "max_new_tokens": self.max_new_tokens}

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any):
        """Let the model call ``tools`` (LangChain tools, functions, pydantic models or JSON schemas).

        Needs a chat template that renders tools and no ``index`` (the head reads the conversation without tool
        definitions, so a prompt with them cannot be the retrieval's prefill). ``tool_choice``: None or ``"auto"``
        (greedy decoding cannot force a call). ``parallel_tool_calls`` and ``strict`` are accepted and ignored.
        """
        require_tools_template(self.embedder.tokenizer, TOOLS_ALTERNATIVE)
        if self.index is not None:
            raise ConversationError(
                "A NativeChatModel with an index retrieves in its prefill of the conversation, which a prompt with "
                "tool definitions is not (the head reads the conversation alone). " + TOOLS_ALTERNATIVE
            )
        if tool_choice not in (None, "auto"):
            raise ValueError(
                f"tool_choice={tool_choice!r} cannot be enforced: NativeChatModel decodes greedily, with no "
                "constrained decoding. Bind the tools with tool_choice=None and say in the prompt which to call."
            )
        kwargs.pop("parallel_tool_calls", None)
        kwargs.pop("strict", None)
        return super().bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        model, tokenizer = self.embedder.model, self.embedder.tokenizer
        tools = kwargs.get("tools") or None
        chat = tool_chat_messages(messages)  # tool calls and results kept: start_call refuses them with an index
        call = start_call(self.embedder, chat, tools, self.index, self.k, self.hybrid, self._conversations)
        metadata = {**call.metadata(), "model_name": model.name_or_path}
        if call.ready is not None:
            metadata["retrieved_documents"] = [document_record(hit_document(h)) for h in call.ready.hits]
        yield ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=metadata))

        def chunk(delta: str) -> ChatGenerationChunk:
            if run_manager:
                run_manager.on_llm_new_token(delta)
            return ChatGenerationChunk(message=AIMessageChunk(content=delta))

        shown = ""
        try:
            for delta in call.deltas(model, tokenizer, self.max_new_tokens, self.min_new_tokens, stop):
                shown += delta
                yield chunk(delta)
        finally:
            call.keep(self._conversations)
        if call.tools:
            yield from self._calls(call, shown, chunk)
        usage = {"input_tokens": len(call.prompt), "output_tokens": len(call.answer_ids)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage, chunk_position="last"))

    @staticmethod
    def _calls(call: ChatCall, shown: str, chunk) -> Iterator[ChatGenerationChunk]:
        """The text held back, then the tool calls read from the answer (a block that is not a valid call becomes
        an ``invalid_tool_calls`` entry, its reason in ``response_metadata["tool_call_errors"]``)."""
        rest, calls, invalid = call.tool_calls(shown)
        if rest:
            yield chunk(rest)
        parts = [{"name": c.name, "args": json.dumps(c.arguments), "id": c.id, "index": n} for n, c in enumerate(calls)]
        # a JSON string as the arguments: LangChain's lenient parse cannot read it as an object, so it stays invalid
        parts += [
            {"name": c.name, "args": json.dumps(c.text), "id": c.id, "index": len(calls) + n}
            for n, c in enumerate(invalid)
        ]
        if parts:
            errors = {c.id: c.error for c in invalid}
            metadata = {"tool_call_errors": errors} if errors else {}
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", tool_call_chunks=parts, response_metadata=metadata)
            )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = list(self._stream(messages, stop, None, **kwargs))
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        errors = merged.message.response_metadata.get("tool_call_errors", {})
        invalid = [
            {**c, "args": json.loads(c["args"]), "error": errors.get(c["id"])} if c["id"] in errors else c
            for c in merged.message.invalid_tool_calls
        ]
        message = AIMessage(
            content=merged.message.content.strip(),
            response_metadata=merged.message.response_metadata,
            usage_metadata=merged.message.usage_metadata,
            tool_calls=merged.message.tool_calls,
            invalid_tool_calls=invalid,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
