"""A LangChain chat model for a local Hugging Face causal LM whose model call is the retrieval.

:class:`NativeChatModel` answers a conversation the way :func:`~native_retriever.agent.native_turn` does: one
prefill of the conversation gives the query vector (the head reads that prefill's states) and the KV cache; the
passages found are appended on the cache as a tool call and result in the model's chat template, and the answer
continues from it. No second model, no second pass over the conversation::

    chat = NativeChatModel(embedder=NativeEmbedder(model, tokenizer), index=index, k=3)
    message = chat.invoke([HumanMessage("Who discovered polonium?")])
    message.response_metadata["retrieved_documents"]   # [{"id", "page_content", "metadata"}]
    for chunk in chat.stream(messages): ...            # tokens as they are decoded; ainvoke / astream too

It is a ``BaseChatModel``: callbacks, tracing, ``create_agent`` (without tools) and LangGraph work as for any chat
model. Decoding is greedy. Tool calling is not supported yet: ``bind_tools`` refuses and points to
``NativeRetrievalMiddleware`` for agents with tools.

Needs the ``langchain`` extra: ``pip install "native-retriever[langchain]"``.
"""
# ruff: noqa: E402  (the imports below must come after the check that names the extra)

from __future__ import annotations

from . import require

require("langchain_core", "langchain")

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, field_validator

from ..agent import native_prompt, stream_greedy
from ..bm25 import DEFAULT_HYBRID, Hybrid
from ..embedder import NativeEmbedder
from ..index import VectorIndex
from .langchain import _check_k, document_record, hit_document, to_chat_messages

__all__ = ["NativeChatModel"]


class NativeChatModel(BaseChatModel):
    """A chat model over ``embedder``'s LLM that retrieves from ``index`` with its own prefill of the conversation.

    ``k`` passages per answer, searched with ``hybrid`` (:class:`~native_retriever.bm25.Hybrid`; None: the vector
    alone); at most ``max_new_tokens`` answer tokens, greedy. The answer's ``response_metadata`` holds
    ``retrieved_documents`` (``Document`` fields as dicts, the score in ``metadata["score"]``) and ``timings_ms``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embedder: NativeEmbedder
    index: VectorIndex
    k: int = 3
    max_new_tokens: int = 256
    hybrid: Hybrid | None = DEFAULT_HYBRID

    @field_validator("k")
    @classmethod
    def _k(cls, value: int) -> int:
        return _check_k(value)

    @field_validator("max_new_tokens")
    @classmethod
    def _max_new_tokens(cls, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {value!r}")
        return value

    @property
    def _llm_type(self) -> str:
        return "native-retriever-huggingface"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.embedder.model.name_or_path, "k": self.k, "max_new_tokens": self.max_new_tokens}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):
        """Not supported yet: for an agent with tools, give ``create_agent`` another chat model and retrieve with
        ``NativeRetrievalMiddleware`` (native_retriever.integrations.langchain_agents)."""
        raise NotImplementedError(
            "NativeChatModel does not call tools yet. For an agent with tools, run create_agent on another chat model "
            "(ChatHuggingFace over the same model) with middleware=[NativeRetrievalMiddleware(retriever)]."
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        model, tokenizer = self.embedder.model, self.embedder.tokenizer
        ready = native_prompt(self.embedder, self.index, to_chat_messages(messages), self.k, self.hybrid)
        documents = [document_record(hit_document(h)) for h in ready.hits]
        metadata = {"retrieved_documents": documents, "timings_ms": ready.timings, "model_name": model.name_or_path}
        yield ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=metadata))
        answer: list[int] = []
        text = ""  # what was yielded: the decoded answer up to its last whole character, as TextStreamer does

        def chunk(delta: str) -> ChatGenerationChunk:
            if run_manager:
                run_manager.on_llm_new_token(delta)
            return ChatGenerationChunk(message=AIMessageChunk(content=delta))

        for token in stream_greedy(model, tokenizer, ready.prompt, ready.cache, self.max_new_tokens):
            answer.append(token)
            decoded = tokenizer.decode(answer, skip_special_tokens=True).lstrip()
            cut = min((i for i in (decoded.find(s) for s in stop or []) if i >= 0), default=-1)
            if cut < 0 and decoded.endswith("\ufffd"):
                continue  # a character split over tokens: wait for its other bytes
            delta = (decoded[:cut] if cut >= 0 else decoded)[len(text) :]
            if delta:
                text += delta
                yield chunk(delta)
            if cut >= 0:
                break
        else:  # the answer ended: what a held-back split character became
            delta = tokenizer.decode(answer, skip_special_tokens=True).lstrip()[len(text) :]
            if delta:
                yield chunk(delta)
        usage = {"input_tokens": len(ready.prompt), "output_tokens": len(answer)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage, chunk_position="last"))

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
        message = AIMessage(
            content=merged.message.content.strip(),
            response_metadata=merged.message.response_metadata,
            usage_metadata=merged.message.usage_metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
