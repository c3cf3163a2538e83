"""Evaluation's teacher corpus vectors are cached by content: a second eval does not encode the corpus again, an
edited corpus is encoded again, and a damaged cache is never loaded."""

from __future__ import annotations

import numpy as np
import pytest

from native_retriever.data import load_data
from native_retriever.evaluation import evaluate_systems
from native_retriever.teacher import corpus_vectors


@pytest.fixture
def counted(teacher, monkeypatch, tmp_path):
    """The teacher, with every encode call's number of texts recorded; the package's home in tmp_path."""
    monkeypatch.setenv("NATIVE_RETRIEVER_HOME", str(tmp_path / "home"))
    calls: list[int] = []
    encode = teacher.encode

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return encode(texts, **kwargs)

    monkeypatch.setattr(teacher, "encode", counting)
    return teacher, calls, encode


def test_a_second_eval_does_not_encode_the_corpus_again(counted, tiny_data_folder, tmp_path):
    teacher, calls, _ = counted
    data = load_data(tiny_data_folder)
    first = evaluate_systems(data, ["teacher-question"], teacher=teacher)
    assert sorted(calls) == sorted([len(data.corpus), len(data.queries)])  # the corpus once, the questions once
    assert len(list((tmp_path / "home" / "corpus-vectors").iterdir())) == 1

    calls.clear()
    second = evaluate_systems(data, ["teacher-question"], teacher=teacher)
    assert calls == [len(data.queries)]  # the queries only: the corpus vectors come from the cache
    assert second == first


def test_an_edited_corpus_or_another_teacher_window_is_encoded_again(counted, tmp_path):
    teacher, calls, encode = counted
    texts = ["The Zorblat festival fills the spring nights.", "The Mirravel river has purple reeds."]
    vectors = corpus_vectors(teacher, texts, tmp_path / "cache")
    edited = [texts[0], texts[1] + " They are cut in autumn."]
    again = corpus_vectors(teacher, edited, tmp_path / "cache")
    assert calls == [2, 2]
    np.testing.assert_allclose(again[0], vectors[0], atol=1e-5)
    np.testing.assert_allclose(again[1], encode([edited[1]])[0], atol=1e-6)
    assert not np.allclose(again[1], vectors[1], atol=1e-3)

    calls.clear()
    np.testing.assert_array_equal(corpus_vectors(teacher, texts, tmp_path / "cache"), vectors)
    assert calls == []
    window = teacher.model.max_seq_length
    try:
        teacher.model.max_seq_length = 16
        corpus_vectors(teacher, texts, tmp_path / "cache")
    finally:
        teacher.model.max_seq_length = window
    assert calls == [2]


def test_a_damaged_cache_is_encoded_again_not_loaded(counted, tmp_path):
    teacher, calls, _ = counted
    texts = ["The Tessaline bridge sings in the wind.", "The Gobrimax engine has a basalt flywheel."]
    vectors = corpus_vectors(teacher, texts, tmp_path / "cache")
    (saved,) = (tmp_path / "cache").glob("*/vectors.npy")
    np.save(saved, np.zeros_like(vectors))  # altered behind the manifest's back
    calls.clear()
    np.testing.assert_allclose(corpus_vectors(teacher, texts, tmp_path / "cache"), vectors, atol=1e-6)
    assert calls == [2]
    calls.clear()
    np.testing.assert_allclose(corpus_vectors(teacher, texts, tmp_path / "cache"), vectors, atol=1e-6)
    assert calls == []  # and the cache was repaired
