"""A small RAG turn for Hugging Face chat models: retrieved passages in, a short answer out.

- ``native_turn``: one prefill of the conversation gives both the query vector (the head reads the prefill's
  states through ``NativeEmbedder.capture``) and the KV cache the answer continues on, after the passages are
  appended as a tool result in the model's chat template. The conversation is never prefilled twice.
- ``classic_turn``: generate-then-encode (the LLM writes a standalone query, the teacher encodes it), then a new
  prompt with the passages in front is prefilled and answered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import DynamicCache

from .bm25 import DEFAULT_HYBRID, Hybrid
from .compat import cache_kwargs
from .conversation import (
    EncodedConversation,
    clean_query,
    kept_messages,
    lexical_queries,
    rewrite_messages,
    tokenize_chat,
    validate_conversation,
)
from .errors import ConversationError
from .index import SearchHit
from .states import pad_token_id
from .turn_cache import ConversationCache, KeptConversation

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .embedder import NativeEmbedder
    from .index import VectorIndex
    from .teacher import Teacher

#: What a search tool tells the model it does (the LangChain and LlamaIndex search tools).
SEARCH_DESCRIPTION = (
    "Search the documents for passages that answer the user's current question. The search reads the whole "
    "conversation, so a short query is enough. Returns numbered passages."
)
ANSWER_SYSTEM_PROMPT = "Answer the user's last question in one short sentence, using only these passages:"


def numbered_passages(texts: Iterable[str]) -> str:
    """Passages as the answering LLM reads them: one a line, numbered from 1 (``[1] first\n[2] second``)."""
    return "\n".join(f"[{n}] {text}" for n, text in enumerate(texts, 1))


def answer_messages(messages: Sequence, hits: Sequence[SearchHit]) -> list[dict]:
    """The conversation with the retrieved passages put in front as a system message."""
    passages = numbered_passages(hit.text for hit in hits)
    conversation = [m for m in validate_conversation(messages) if m["role"] != "system"]
    return [{"role": "system", "content": f"{ANSWER_SYSTEM_PROMPT}\n{passages}"}, *conversation]


# -- one RAG turn on one KV cache ------------------------------------------------------------------------------------
# The native turn closes the assistant's turn with a tool call, adds the passages as a tool-result message and opens a
# new assistant turn, all in the model's own chat template, then generates on the cache of the conversation's prefill.
SEARCH_CALL = '<tool_call>\n{"name": "search_documents", "arguments": {}}\n</tool_call>'
TOOL_ROLE = "tool"
TOOL_INSTRUCTION = "Answer the user's last question in one short sentence, using only the passages above."


@dataclass
class Turn:
    """One RAG turn: the answer, the passages it read, and the time of each step in milliseconds."""

    answer: str
    hits: list[SearchHit]
    timings: dict[str, float]
    answer_ids: list[int]
    prompt_ids: list[int]  # everything before the answer, as the model saw it
    query: str | None = None  # the generated standalone query (classic turn)
    vector: np.ndarray | None = field(default=None, repr=False)


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = 1000 * (now - self._last)
        self._last = now


def passages_text(hits: Sequence[SearchHit]) -> str:
    """The tool result: numbered passages, then the answering instruction."""
    return f"{numbered_passages(hit.text for hit in hits)}\n{TOOL_INSTRUCTION}"


def tool_messages(hits: Sequence[SearchHit], call: str = SEARCH_CALL, role: str = TOOL_ROLE) -> list[dict]:
    """The assistant's search call and the tool's result, appended after the conversation."""
    return [{"role": "assistant", "content": call}, {"role": role, "content": passages_text(hits)}]


def formatted_messages(embedder: NativeEmbedder, messages: Sequence) -> tuple[list[dict], EncodedConversation]:
    """The messages ``embedder.tokenize`` kept (window cut, system prompt added) and their encoding."""
    encoded = embedder.tokenize(messages)
    return kept_messages(messages, embedder.prompt_format, encoded.dropped_messages), encoded


def appended_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], prefix_ids: Sequence[int], extra: Sequence[dict]
) -> list[int]:
    """Token ids that the chat template renders after ``prefix_ids`` for ``messages + extra`` (with a new
    generation prompt). Raises ConversationError when the render does not start with exactly ``prefix_ids``:
    then the cache of the prefix could not be continued."""
    ids = tokenize_chat(tokenizer, [*messages, *extra])
    if ids[: len(prefix_ids)] != list(prefix_ids):
        raise ConversationError(
            "The chat template renders the conversation with the tool result so that it does not start with the "
            "conversation's own tokens; the KV cache cannot be continued. Use another tool role or call text."
        )
    return ids[len(prefix_ids) :]


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def prefill(model: PreTrainedModel, input_ids: Sequence[int], cache: DynamicCache | None = None) -> DynamicCache:
    """Run ``input_ids`` (one sequence, after what ``cache`` holds) through the model; returns the grown cache."""
    cache = cache if cache is not None else DynamicCache(config=model.config)
    ids = torch.tensor([list(input_ids)], device=_device(model))
    model(input_ids=ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    return cache


@torch.inference_mode()
def continue_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Sequence[int],
    cache: DynamicCache,
    max_new_tokens: int,
    min_new_tokens: int = 0,
) -> list[int]:
    """Greedy tokens after ``input_ids``, whose first ``cache.get_seq_length()`` tokens are already in ``cache``."""
    if cache.get_seq_length() >= len(input_ids):
        raise ValueError("The cache covers the whole prompt; leave at least its last token out of the prefill.")
    ids = torch.tensor([list(input_ids)], device=_device(model))
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        **cache_kwargs(model, cache),
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id(tokenizer),
    )
    return out[0, ids.shape[1] :].tolist()


def _finish(tokenizer: PreTrainedTokenizerBase, answer_ids: list[int]) -> str:
    return tokenizer.decode(answer_ids, skip_special_tokens=True).strip()


@dataclass
class NativePrompt:
    """A conversation prefilled once, its passages retrieved and appended: the answer continues on ``cache``.

    ``prefilled_tokens``: how many of ``prompt``'s tokens this turn ran through the model (fewer than the prompt
    when a kept conversation's cache was continued; its last token is run by the first decoding step).
    """

    prompt: list[int]  # everything before the answer; the cache holds all of it but the last token
    cache: DynamicCache
    hits: list[SearchHit]
    vector: np.ndarray = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    prefilled_tokens: int = 0
    conversation: KeptConversation | None = field(default=None, repr=False)

    def keep(self, conversations: ConversationCache | None) -> None:
        """After the answer: cut the cache back to the conversation and keep it in ``conversations`` for the next
        turn (the answer will come back as a message of the conversation; the passages will not)."""
        if conversations is not None and self.conversation is not None:
            kept, self.conversation = self.conversation, None
            kept.cut(len(kept.ids))
            conversations.put(kept)


def native_prompt(
    embedder: NativeEmbedder,
    index: VectorIndex,
    messages: Sequence,
    k: int = 3,
    hybrid: Hybrid | None = DEFAULT_HYBRID,
    conversations: ConversationCache | None = None,
) -> NativePrompt:
    """The retrieval half of :func:`native_turn`: one prefill of the conversation gives the query vector (capture)
    and the cache; the passages found are appended to it as a tool call and result.

    ``conversations``: continue the cache of a kept earlier turn of this conversation (only the new tokens are
    prefilled); call ``keep(conversations)`` on the result once the answer is decoded.
    """
    model, tokenizer = embedder.model, embedder.tokenizer
    clock = _Clock()
    kept, encoded = formatted_messages(embedder, messages)
    ids = encoded.input_ids
    before = conversations.take(ids) if conversations is not None else None
    start = len(before.ids) if before is not None else 0
    cache = before.cache if before is not None else DynamicCache(config=model.config)
    with embedder.capture(extend=True) as cap:
        prefill(model, ids[start:], cache)
    states = cap.require_prefill().states[0]
    if before is not None:
        states = torch.cat([before.states, states])
    states = states[-embedder.head.config.max_input_tokens :]
    clock.lap("prefill")
    vector = embedder.head_vectors([states], [encoded], [len(ids) - len(states)])
    clock.lap("head")
    texts = [lexical_queries(messages, hybrid.texts)] if hybrid else None
    hits = index.search(vector, k=k, texts=texts, hybrid=hybrid)[0]
    clock.lap("search")
    prompt = ids + appended_ids(tokenizer, kept, ids, tool_messages(hits))
    prefill(model, prompt[len(ids) : -1], cache)
    clock.lap("passages_prefill")
    conversation = KeptConversation(list(ids), cache, states)
    return NativePrompt(prompt, cache, hits, vector[0], clock.timings, len(prompt) - start, conversation)


def native_turn(
    embedder: NativeEmbedder,
    index: VectorIndex,
    messages: Sequence,
    k: int = 3,
    max_new_tokens: int = 48,
    min_new_tokens: int = 0,
    hybrid: Hybrid | None = DEFAULT_HYBRID,
    conversations: ConversationCache | None = None,
) -> Turn:
    """Retrieve and answer with one prefill of the conversation.

    The conversation (the head's formatted tokens, ``embedder.tokenize``) is prefilled once; the head reads that
    prefill's states (``embedder.capture``); the passages are appended as a tool call and result in the chat
    template and the answer is generated on the same KV cache (:func:`native_prompt`). The search fuses the head's
    vector with BM25 on the conversation's last user messages (``hybrid``, see :class:`~native_retriever.bm25.Hybrid`;
    None: the vector alone). ``conversations``: keep the conversation's cache for its next turn (see
    :mod:`native_retriever.turn_cache`). Timings: ``prefill`` (formatting included), ``head``, ``search``,
    ``passages_prefill`` (the appended tokens), ``answer`` (decoding).
    """
    model, tokenizer = embedder.model, embedder.tokenizer
    ready = native_prompt(embedder, index, messages, k, hybrid, conversations)
    started = time.perf_counter()
    answer_ids = continue_greedy(model, tokenizer, ready.prompt, ready.cache, max_new_tokens, min_new_tokens)
    ready.keep(conversations)
    timings = {**ready.timings, "answer": 1000 * (time.perf_counter() - started)}
    return Turn(_finish(tokenizer, answer_ids), ready.hits, timings, answer_ids, ready.prompt, vector=ready.vector)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids that end an answer: the generation config's ``eos_token_id`` (one or several), else the tokenizer's."""
    value = getattr(model.generation_config, "eos_token_id", None)
    if value is None:
        value = tokenizer.eos_token_id
    return {int(v) for v in (value if isinstance(value, list | tuple) else [value]) if v is not None}


@torch.inference_mode()
def stream_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Sequence[int],
    cache: DynamicCache,
    max_new_tokens: int,
    min_new_tokens: int = 0,
) -> Iterator[int]:
    """Greedy tokens after ``input_ids`` one at a time, as they are decoded (the end-of-turn token not included, and
    not chosen before ``min_new_tokens``); the first ``cache.get_seq_length()`` tokens of ``input_ids`` are already
    in ``cache``."""
    pending = list(input_ids[cache.get_seq_length() :])
    if not pending:
        raise ValueError("The cache covers the whole prompt; leave at least its last token out of the prefill.")
    stops = stop_token_ids(model, tokenizer)
    device = _device(model)
    for step in range(max_new_tokens):
        ids = torch.tensor([pending], device=device)
        logits = model(input_ids=ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1).logits[0, -1]
        if step < min_new_tokens:
            logits[list(stops)] = float("-inf")
        token = int(logits.argmax())
        if token in stops:
            return
        yield token
        pending = [token]


def classic_turn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    teacher: Teacher,
    index: VectorIndex,
    messages: Sequence,
    k: int = 3,
    max_new_tokens: int = 48,
    min_new_tokens: int = 0,
    query_tokens: int = 32,
) -> Turn:
    """Generate-then-encode, then answer: the LLM rewrites the question (``generate_query``'s prompt), the teacher
    encodes it, the index is searched and a new prompt with the passages (``answer_messages``) is prefilled and
    answered. Timings: ``query_prefill``, ``query_generation``, ``teacher``, ``search``, ``answer_prefill``,
    ``answer`` (decoding)."""
    clock = _Clock()
    rewrite_ids = tokenize_chat(tokenizer, rewrite_messages(messages))
    cache = prefill(model, rewrite_ids[:-1])
    clock.lap("query_prefill")
    query = clean_query(_finish(tokenizer, continue_greedy(model, tokenizer, rewrite_ids, cache, query_tokens)))
    clock.lap("query_generation")
    vector = teacher.encode([query or messages[-1]["content"]])
    clock.lap("teacher")
    hits = index.search(vector, k=k)[0]
    clock.lap("search")
    prompt = tokenize_chat(tokenizer, answer_messages(messages, hits))
    cache = prefill(model, prompt[:-1])
    clock.lap("answer_prefill")
    answer_ids = continue_greedy(model, tokenizer, prompt, cache, max_new_tokens, min_new_tokens)
    clock.lap("answer")
    return Turn(_finish(tokenizer, answer_ids), hits, clock.timings, answer_ids, prompt, query, vector[0])


def passage_overlap(first: Sequence[SearchHit], second: Sequence[SearchHit]) -> float:
    """Share of the passages found by both turns (|A ∩ B| / max(|A|, |B|); 1.0 when both are empty)."""
    a, b = {h.id for h in first}, {h.id for h in second}
    return len(a & b) / max(len(a), len(b)) if a or b else 1.0
