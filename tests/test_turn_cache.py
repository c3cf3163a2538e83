"""Tests for native_retriever.turn_cache: a conversation's KV cache and head states kept between its turns, so a
turn prefills only its new tokens and still gets the vector and answer of a fresh prefill."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import topic_index

from native_retriever.agent import native_prompt, native_turn
from native_retriever.embedder import NativeEmbedder
from native_retriever.models import llm_info
from native_retriever.turn_cache import ConversationCache

FIRST = [{"role": "user", "content": "Tell me about the Mirravel river near Dunhollow."}]


@pytest.fixture(scope="module")
def embedder(make_tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    llm = make_tiny_llm(seed=3, initializer_range=0.3)
    llm.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    head = tiny_head_factory("attention")
    head.config.llm = llm_info(llm)
    return NativeEmbedder(llm, tiny_tokenizer, head=head, teacher=teacher)


@pytest.fixture(scope="module")
def index(embedder):
    return topic_index(embedder)


def _next(messages: list[dict], answer: str, question: str) -> list[dict]:
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": question}]


def test_a_kept_conversation_prefills_only_its_new_tokens_and_gives_the_fresh_results(embedder, index):
    conversations = ConversationCache()
    first = native_turn(embedder, index, FIRST, max_new_tokens=6, conversations=conversations)
    assert len(conversations) == 1
    second_messages = _next(FIRST, first.answer, "When should I visit it?")
    ready = native_prompt(embedder, index, second_messages, conversations=conversations)
    fresh = native_prompt(embedder, index, second_messages)
    assert len(conversations) == 0  # taken while the turn uses it
    assert fresh.prefilled_tokens == len(fresh.prompt)
    conversation_tokens = len(embedder.tokenize(FIRST).input_ids)
    assert ready.prefilled_tokens == len(ready.prompt) - conversation_tokens
    assert ready.prompt == fresh.prompt
    assert [h.id for h in ready.hits] == [h.id for h in fresh.hits]
    np.testing.assert_allclose(ready.vector, fresh.vector, atol=2e-5)
    np.testing.assert_allclose(ready.vector, embedder.embed_conversation(second_messages), atol=2e-5)
    ready.keep(conversations)
    assert len(conversations) == 1

    # the answer continues on the kept cache as on a fresh one
    third_messages = _next(second_messages, "In spring.", "What grows there?")
    kept = native_turn(embedder, index, third_messages, max_new_tokens=6, conversations=conversations)
    plain = native_turn(embedder, index, third_messages, max_new_tokens=6)
    assert kept.answer_ids == plain.answer_ids
    assert [h.id for h in kept.hits] == [h.id for h in plain.hits]


def test_another_conversation_or_an_edited_one_is_prefilled_from_its_start(embedder, index):
    conversations = ConversationCache()
    native_turn(embedder, index, FIRST, max_new_tokens=4, conversations=conversations)
    other = [{"role": "user", "content": "What is the Selvane desert like?"}]
    ready = native_prompt(embedder, index, other, conversations=conversations)
    assert ready.prefilled_tokens == len(ready.prompt)
    assert len(conversations) == 1  # the first conversation is still kept
    # the same conversation asked again: all but its last token come from the cache
    again = native_prompt(embedder, index, FIRST, conversations=conversations)
    assert again.prefilled_tokens == len(again.prompt) - len(embedder.tokenize(FIRST).input_ids) + 1
    assert [h.id for h in again.hits] == [h.id for h in native_prompt(embedder, index, FIRST).hits]


def test_the_least_recently_used_conversation_goes_first(embedder, index):
    conversations = ConversationCache(max_conversations=2)
    talks = [[{"role": "user", "content": f"Tell me about place number {n}."}] for n in range(3)]
    for talk in talks:
        native_turn(embedder, index, talk, max_new_tokens=2, conversations=conversations)
    assert len(conversations) == 2
    oldest = native_prompt(embedder, index, _next(talks[0], "Sure.", "And then?"), conversations=conversations)
    assert oldest.prefilled_tokens == len(oldest.prompt)
    newest = native_prompt(embedder, index, _next(talks[2], "Sure.", "And then?"), conversations=conversations)
    assert newest.prefilled_tokens < len(newest.prompt)
    assert ConversationCache(max_conversations=0).take([1, 2]) is None
    with pytest.raises(ValueError, match="max_conversations"):
        ConversationCache(max_conversations=-1)


def test_concurrent_conversations_never_share_a_cache(embedder, index):
    conversations = ConversationCache(max_conversations=8)
    talks = [[{"role": "user", "content": f"Tell me about the river number {n}."}] for n in range(4)]
    expected = {}
    for n, talk in enumerate(talks):
        turn = native_turn(embedder, index, talk, max_new_tokens=3)
        expected[n] = native_turn(embedder, index, _next(talk, turn.answer, "When?"), max_new_tokens=3).answer_ids
    results: dict[int, list[int]] = {}

    def run(n: int) -> None:
        turn = native_turn(embedder, index, talks[n], max_new_tokens=3, conversations=conversations)
        follow = _next(talks[n], turn.answer, "When?")
        results[n] = native_turn(embedder, index, follow, max_new_tokens=3, conversations=conversations).answer_ids

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected
