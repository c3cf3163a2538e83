"""Tests for native_retriever.capture: vectors from the agent's own prefill equal embed_conversation; hooks are
removed on exit and on error; left-padded batches; only the last prefill kept; generate() unchanged. Also the
attention head's inference fast path (heads.py) against its training path."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from native_retriever.capture import HiddenStateCapture
from native_retriever.embedder import DEFAULT_HEAD, NativeEmbedder
from native_retriever.errors import CaptureError
from native_retriever.heads import ProjectionHead

CONVERSATIONS = [
    [{"role": "user", "content": "What can I see at the Zorblat festival?"}],
    [
        {"role": "user", "content": "Tell me about the Mirravel river near Dunhollow."},
        {"role": "assistant", "content": "It has purple reeds along its banks and is lovely in autumn."},
        {"role": "user", "content": "When should I visit it?"},
    ],
    [
        {"role": "user", "content": "Is the Tessaline bridge worth a trip?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Why do its railings sing in the wind near Karrowmere?"},
    ],
]


def _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, architecture="attention", **overrides):
    head = tiny_head_factory(architecture, **overrides)
    return NativeEmbedder(tiny_llm, tiny_tokenizer, head=head, teacher=teacher)


def _batch(embedder, conversations, queries=None):
    """The head's formatted conversations as one left-padded batch, as an agent would send them to generate()."""
    queries = queries or [None] * len(conversations)
    ids = [embedder.tokenize(c, query=q).input_ids for c, q in zip(conversations, queries)]
    longest = max(map(len, ids))
    pad = embedder.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (longest - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (longest - len(i)) + [1] * len(i) for i in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _generate(model, batch, tokens=4):
    return model.generate(**batch, max_new_tokens=tokens, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize(
    ("architecture", "layers"),
    [("attention", [-1]), ("linear", [-1]), ("transformer", [-1]), ("attention", [1, -1]), ("linear", [0, -2, 0])],
)
def test_left_padded_generate_batch_equals_embed_conversation_per_row(
    tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, architecture, layers
):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, architecture, layers=layers)
    batch = _batch(embedder, CONVERSATIONS)
    assert (batch["attention_mask"] == 0).any()  # the batch really is left-padded
    with embedder.capture() as cap:
        _generate(tiny_llm, batch)
    vectors = cap.vectors(CONVERSATIONS)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    for row, conversation in enumerate(CONVERSATIONS):
        np.testing.assert_allclose(vectors[row], embedder.embed_conversation(conversation), atol=1e-5)
    np.testing.assert_allclose(cap.vectors(), vectors, atol=0)  # tokens="all": the rows' own tokens suffice


def test_single_conversation_through_model_call(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher)
    ids = torch.tensor([embedder.tokenize(CONVERSATIONS[1]).input_ids])
    with embedder.capture() as cap, torch.no_grad():
        tiny_llm(input_ids=ids)
    np.testing.assert_allclose(cap.vectors()[0], embedder.embed_conversation(CONVERSATIONS[1]), atol=1e-5)


def test_generate_output_is_unchanged_by_the_capture(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher)
    batch = _batch(embedder, CONVERSATIONS)
    plain = _generate(tiny_llm, batch, tokens=8)
    with embedder.capture():
        captured = _generate(tiny_llm, batch, tokens=8)
    assert torch.equal(plain, captured)


def test_hooks_are_removed_on_exit_and_on_error(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, layers=[1, -1])
    before = _hook_count(tiny_llm)
    with embedder.capture() as cap:
        assert _hook_count(tiny_llm) == before + 4  # call, return, one layer, base output
    assert _hook_count(tiny_llm) == before and not cap.active
    with pytest.raises(ZeroDivisionError), embedder.capture():
        _generate(tiny_llm, _batch(embedder, CONVERSATIONS[:1]))
        1 / 0  # noqa: B018
    assert _hook_count(tiny_llm) == before
    with pytest.raises(IndexError), embedder.capture():  # a forward that fails inside the block (bad token id)
        tiny_llm(input_ids=torch.tensor([[10**6]]))
    assert _hook_count(tiny_llm) == before
    # the embedder's lock was released: another thread can embed
    done = []
    thread = threading.Thread(target=lambda: done.append(embedder.embed_conversation(CONVERSATIONS[0])))
    thread.start()
    thread.join(timeout=30)
    assert done


def test_only_the_last_prefill_is_kept(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher)
    with embedder.capture() as cap:
        _generate(tiny_llm, _batch(embedder, CONVERSATIONS), tokens=6)
        assert cap.prefills_seen == 1  # the decode steps did not count as prefills
        assert cap.prefill.states.shape[0] == 3
        _generate(tiny_llm, _batch(embedder, CONVERSATIONS[1:2]), tokens=6)
    assert cap.prefills_seen == 2 and cap.prefill.states.shape[0] == 1
    np.testing.assert_allclose(cap.vectors()[0], embedder.embed_conversation(CONVERSATIONS[1]), atol=1e-5)


def test_memory_holds_only_the_window_the_head_reads(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, max_input_tokens=8)
    batch = _batch(embedder, CONVERSATIONS)
    with embedder.capture() as cap:
        _generate(tiny_llm, batch, tokens=6)
    states = cap.prefill.states
    assert states.shape == (3, 8, tiny_llm.config.hidden_size)  # not (3, T, H), and no decode steps
    assert states.untyped_storage().nbytes() == states.numel() * states.element_size()  # a copy, not a view
    vectors = cap.vectors(CONVERSATIONS)
    for row, conversation in enumerate(CONVERSATIONS):
        np.testing.assert_allclose(vectors[row], embedder.embed_conversation(conversation), atol=1e-5)


def test_forwards_outside_the_agent_call_are_ignored(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher)
    with embedder.capture() as cap:
        embedder.embed_conversation(CONVERSATIONS[0])  # runs model.base_model directly: not an agent call
        other = threading.Thread(target=lambda: tiny_llm(input_ids=torch.tensor([[5, 6, 7]])))
        other.start()
        other.join()
    assert cap.prefill is None
    with pytest.raises(CaptureError, match="No prefill"):
        cap.vectors()


def test_forwards_of_other_threads_during_a_prefill_leave_it_whole(
    tiny_llm, tiny_tokenizer, tiny_head_factory, teacher
):
    """Concurrent requests on one model: another request's decode steps while ours prefills must not reset it."""
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher)
    expected = [embedder.embed_conversation(c) for c in CONVERSATIONS]
    done = threading.Event()

    def other_request() -> None:
        with torch.no_grad():
            while not done.is_set():
                tiny_llm(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]]))

    other = threading.Thread(target=other_request)
    other.start()
    try:
        for _ in range(10):
            for conversation, vector in zip(CONVERSATIONS, expected, strict=True):
                ids = torch.tensor([embedder.tokenize(conversation).input_ids])
                with embedder.capture() as cap, torch.no_grad():
                    tiny_llm(input_ids=ids)
                np.testing.assert_allclose(cap.vectors()[0], vector, atol=1e-5)
    finally:
        done.set()
        other.join(timeout=30)


def test_a_prompt_in_another_format_is_refused(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher)
    other = tiny_tokenizer(CONVERSATIONS[0][0]["content"], return_tensors="pt")  # raw text, no chat template
    with embedder.capture() as cap:
        _generate(tiny_llm, dict(other))
    with pytest.raises(CaptureError, match="embedder.tokenize"):
        cap.vectors(CONVERSATIONS[:1])
    with pytest.raises(CaptureError, match="2 conversations"):
        cap.vectors(CONVERSATIONS[:2])


def test_last_user_head_needs_the_conversations(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, "linear", span="last_user")
    with embedder.capture() as cap:
        _generate(tiny_llm, _batch(embedder, CONVERSATIONS))
    with pytest.raises(CaptureError, match="pass the conversations"):
        cap.vectors()
    vectors = cap.vectors(CONVERSATIONS)
    for row, conversation in enumerate(CONVERSATIONS):
        np.testing.assert_allclose(vectors[row], embedder.embed_conversation(conversation), atol=1e-5)


def test_query_mode_head_reads_the_generated_query_tokens(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(
        tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, "attention", input_mode="query", span="query"
    )
    queries = ["Zorblat festival", "Mirravel river best season", "Tessaline bridge railings"]
    with embedder.capture() as cap, torch.no_grad():
        tiny_llm(**_batch(embedder, CONVERSATIONS, queries))
    vectors = cap.vectors(CONVERSATIONS, queries)
    np.testing.assert_allclose(vectors, embedder.embed_generated_queries(CONVERSATIONS, queries), atol=1e-5)


def test_a_capture_cannot_be_reopened_and_bad_layers_are_refused(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = _embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher)
    cap = embedder.capture()
    with cap, pytest.raises(CaptureError, match="already open"):
        cap.__enter__()
    with pytest.raises(CaptureError, match="layer 7"):
        HiddenStateCapture(tiny_llm, [7])


# -- the attention head's inference path (heads.py, performance only) ----------------------------------------------
def _states(lengths, hidden, seed=0):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(len(lengths), max(lengths), hidden, generator=generator) * 3
    states[..., 5] += 40.0  # LLM states have a few large dimensions: the folded layer norm must stay exact
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return states, mask


@pytest.mark.parametrize("lengths", [[200], [17, 384, 500, 1], [384]])
def test_shipped_head_fast_path_equals_training_path(lengths):
    head = ProjectionHead.from_pretrained(DEFAULT_HEAD)
    with torch.no_grad():
        head.body.recency.weight.normal_()  # make the recency term matter for the test
    states, mask = _states(lengths, head.config.hidden_size)
    reference = head(states, mask).detach()  # grad enabled: the original (training) code path
    with torch.inference_mode():
        fast = head(states, mask)
        rows = [head(states[r : r + 1, :n], mask[r : r + 1, :n]) for r, n in enumerate(lengths)]
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(rows), reference, atol=1e-5, rtol=0)
    assert not torch.equal(reference[0], ProjectionHead.from_pretrained(DEFAULT_HEAD)(states, mask)[0])


def test_folded_head_weights_follow_weight_updates():
    head = ProjectionHead.from_pretrained(DEFAULT_HEAD)
    states, mask = _states([50], head.config.hidden_size)
    with torch.inference_mode():
        before = head(states, mask)
    with torch.no_grad():  # an optimizer step or load_state_dict changes weights in place
        head.body.norm.weight.mul_(1.5)
        head.body.proj.bias.add_(0.1)
    with torch.inference_mode():
        after = head(states, mask)
    torch.testing.assert_close(after, head(states, mask).detach(), atol=1e-5, rtol=0)
    assert not torch.allclose(before, after, atol=1e-3)
