"""Tests for native_retriever.embedder.NativeEmbedder on a tiny random Llama and the real teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from native_retriever.embedder import NativeEmbedder
from native_retriever.errors import DataFormatError, DimensionMismatchError, IncompatibleHeadError
from native_retriever.models import llm_info

CONVERSATIONS = [
    [{"role": "user", "content": "What can I see at the Zorblat festival?"}],
    [
        {"role": "user", "content": "Tell me about the Mirravel river near Dunhollow."},
        {"role": "assistant", "content": "It has purple reeds along its banks and is lovely in autumn."},
        {"role": "user", "content": "When should I visit it?"},
    ],
    [{"role": "user", "content": "Who built it?"}],
    [
        {"role": "user", "content": "Is the Tessaline bridge worth a trip?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Why do its railings sing in the wind near Karrowmere?"},
    ],
]


@pytest.fixture
def embedder(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    return NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory("transformer"), teacher=teacher)


def _param_ptrs(model) -> dict[str, int]:
    return {name: p.data_ptr() for name, p in model.named_parameters()}


def test_embedders_share_the_model_object(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    ptrs = _param_ptrs(tiny_llm)
    count = sum(p.numel() for p in tiny_llm.parameters())
    first = NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory("linear"), teacher=teacher)
    second = NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory("transformer"), teacher=teacher)
    assert first.model is tiny_llm and second.model is tiny_llm
    assert first.tokenizer is tiny_tokenizer
    first.embed_query("What is the Zorblat festival?")
    second.embed_query("What is the Zorblat festival?")
    assert _param_ptrs(first.model) == ptrs == _param_ptrs(second.model)
    assert sum(p.numel() for p in tiny_llm.parameters()) == count
    head_ptrs = {p.data_ptr() for e in (first, second) for p in e.head.parameters()}
    assert not head_ptrs & set(ptrs.values())  # the heads are the only new parameters


@pytest.mark.parametrize("architecture", ["linear", "attention", "transformer"])
def test_single_conversation_equals_its_row_in_a_padded_batch(
    tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, architecture
):
    embedder = NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory(architecture), teacher=teacher)
    lengths = [len(embedder.tokenize(c).input_ids) for c in CONVERSATIONS]
    assert len(set(lengths)) == len(lengths)  # the batch really mixes lengths
    batch = embedder.embed_conversations(CONVERSATIONS, batch_size=8)
    assert batch.shape == (len(CONVERSATIONS), 384) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for row, conversation in enumerate(CONVERSATIONS):
        np.testing.assert_allclose(embedder.embed_conversation(conversation), batch[row], atol=1e-4)
    # batching in pairs gives the same vectors in the caller's order
    np.testing.assert_allclose(embedder.embed_conversations(CONVERSATIONS, batch_size=2), batch, atol=1e-4)


def test_vectors_depend_on_the_conversation(embedder):
    batch = embedder.embed_conversations(CONVERSATIONS[:2])
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_dimension_and_embed_query(embedder):
    assert embedder.dimension == 384
    text = "What can I see at the Zorblat festival?"
    vector = embedder.embed_query(text)
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    np.testing.assert_allclose(vector, embedder.embed_conversation([{"role": "user", "content": text}]), atol=1e-6)


def test_head_for_another_llm_is_refused_at_construction(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    other = {**llm_info(tiny_llm), "hidden_size": 96, "name": "someone/other-llm"}
    head = tiny_head_factory("linear", llm=other)
    with pytest.raises(IncompatibleHeadError) as info:
        NativeEmbedder(tiny_llm, tiny_tokenizer, head=head, teacher=teacher)
    assert "'someone/other-llm'" in str(info.value) and "'hidden_size'" in str(info.value)
    assert "train-head" in str(info.value)


def test_head_for_another_llm_fingerprint_is_refused(
    tiny_llm, tiny_tokenizer, tiny_head_factory, teacher, make_tiny_llm
):
    other = llm_info(make_tiny_llm(seed=3, initializer_range=0.05))
    with pytest.raises(IncompatibleHeadError, match="'fingerprint' differs"):
        NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory("linear", llm=other), teacher=teacher)


def test_context_and_query_heads_refuse_the_other_mode(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    context = NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory("linear"), teacher=teacher)
    query = NativeEmbedder(
        tiny_llm, tiny_tokenizer, head=tiny_head_factory("linear", input_mode="query"), teacher=teacher
    )
    with pytest.raises(ValueError) as info:
        context.embed_generated_query(CONVERSATIONS[1], "Mirravel river visiting season")
    assert "input mode 'context'" in str(info.value) and "use embed_conversation" in str(info.value)
    with pytest.raises(ValueError) as info:
        query.embed_conversation(CONVERSATIONS[1])
    assert "input mode 'query'" in str(info.value) and "use embed_generated_query" in str(info.value)


def test_query_head_embeds_generated_queries(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    embedder = NativeEmbedder(
        tiny_llm,
        tiny_tokenizer,
        head=tiny_head_factory("transformer", input_mode="query", span="query"),
        teacher=teacher,
    )
    queries = ["Zorblat festival", "Mirravel river best season", "who built it", "Tessaline bridge railings"]
    batch = embedder.embed_generated_queries(CONVERSATIONS, queries)
    assert batch.shape == (4, 384)
    np.testing.assert_allclose(embedder.embed_generated_query(CONVERSATIONS[1], queries[1]), batch[1], atol=1e-4)
    text = "Zorblat festival"
    np.testing.assert_allclose(
        embedder.embed_query(text), embedder.embed_generated_query([{"role": "user", "content": text}], text), atol=1e-6
    )
    with pytest.raises(ValueError, match="strict|shorter|longer"):
        embedder.embed_generated_queries(CONVERSATIONS, queries[:2])


def test_embed_documents_gives_teacher_vectors(embedder, teacher):
    texts = ["The Zorblat festival is held in Quenwick.", "The Mirravel river has purple reeds."]
    vectors = embedder.embed_documents(texts)
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, teacher.encode(texts), atol=1e-5)
    assert embedder.teacher is teacher


def test_embed_documents_refuses_empty_text(embedder):
    with pytest.raises(DataFormatError) as info:
        embedder.embed_documents(["fine text", "   "])
    assert "Text 1 is empty" in str(info.value) and "drop or fill that entry" in str(info.value)


def test_teacher_of_another_dimension_is_refused(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    small = {**teacher.info, "dim": 128, "name": "small-teacher"}
    head = tiny_head_factory("linear", output_dim=128, teacher=small)
    with pytest.raises(IncompatibleHeadError) as info:
        NativeEmbedder(tiny_llm, tiny_tokenizer, head=head, teacher=teacher)
    assert "teacher field 'dim' differs (head: 128, given: 384)" in str(info.value)
    # with the check switched off, embedding documents still refuses the mismatch
    unchecked = NativeEmbedder(tiny_llm, tiny_tokenizer, head=head, teacher=teacher, check_compatible=False)
    with pytest.raises(DimensionMismatchError) as info:
        unchecked.embed_documents(["The Zorblat festival."])
    assert "384-d" in str(info.value) and "128-d" in str(info.value) and "use the teacher" in str(info.value)


def test_teacher_loads_lazily_by_name_from_the_head(tiny_llm, tiny_tokenizer, tiny_head_factory):
    embedder = NativeEmbedder(tiny_llm, tiny_tokenizer, head=tiny_head_factory("linear"))
    assert embedder.teacher.dim == 384
    assert embedder.teacher.name == embedder.head.config.teacher["name"]
    assert embedder.teacher is embedder.teacher


def test_single_query_prints_nothing(embedder, capfd):
    embedder.embed_query("What can I see at the Zorblat festival?")
    embedder.embed_conversation(CONVERSATIONS[1])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_generate_query_is_the_greedy_rewrite_of_the_last_turn(embedder):
    from native_retriever.conversation import clean_query, rewrite_messages
    from native_retriever.generation import generate_text

    query = embedder.generate_query(CONVERSATIONS[1], max_new_tokens=4)
    rewrite = generate_text(embedder.model, embedder.tokenizer, rewrite_messages(CONVERSATIONS[1]), max_new_tokens=4)
    assert query == clean_query(rewrite) and "\n" not in query


def test_embedding_does_not_switch_the_model_to_train_mode_or_track_grads(embedder):
    vector = embedder.embed_conversation(CONVERSATIONS[0])
    assert not embedder.model.training and not embedder.head.training
    assert isinstance(vector, np.ndarray)
    assert all(p.grad is None for p in embedder.model.parameters())
    assert torch.is_grad_enabled()


def test_pad_token_id_falls_back_to_eos_then_zero(tiny_tokenizer):
    from types import SimpleNamespace

    from native_retriever.states import pad_token_id

    assert pad_token_id(tiny_tokenizer) == tiny_tokenizer.pad_token_id
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=7)) == 7
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=[5, 9])) == 5  # configs with several eos ids
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


def test_head_and_latent_embedders_satisfy_the_embedder_protocol(embedder, make_tiny_llm, tiny_tokenizer):
    import inspect

    from native_retriever.latent import LatentConfig, LatentEmbedder, LatentEncoder
    from native_retriever.protocols import EMBEDDER_MEMBERS, Embedder, missing_members

    encoder = LatentEncoder.create(make_tiny_llm(seed=4), tiny_tokenizer, LatentConfig(k=1, lora_r=4, lora_alpha=8))
    latent = LatentEmbedder(encoder.model, tiny_tokenizer, encoder)
    for instance in (embedder, latent):
        assert isinstance(instance, Embedder) and missing_members(instance) == []
        for name in EMBEDDER_MEMBERS[1:]:  # the methods take the protocol's parameters, by the same names
            want = list(inspect.signature(getattr(Embedder, name)).parameters)[1:]
            assert list(inspect.signature(getattr(instance, name)).parameters) == want, (type(instance), name)
    assert not isinstance(object(), Embedder) and missing_members(object()) == list(EMBEDDER_MEMBERS)
