"""Hybrid search: the head's vector ranking fused with BM25 on the conversation's last user messages, in the index,
the agent turn and the evaluation alike."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from native_retriever.bm25 import DEFAULT_HYBRID, BM25Index, Hybrid, convex_fusion, reciprocal_rank_fusion
from native_retriever.conversation import lexical_queries
from native_retriever.data import RetrievalData
from native_retriever.errors import ConversationError
from native_retriever.evaluation import EvalInputs, evaluate_systems, hybrid_run, story_candidates
from native_retriever.index import VectorIndex

TEXTS = [
    "Marie Curie was a physicist who discovered polonium and radium.",
    "The cat sat on the mat all afternoon.",
    "She died of aplastic anemia in 1934, caused by radiation.",
    "Paris is the capital of France and its largest city.",
    "Runners trained for the marathon through the winter.",
]


def _index(dim: int = 8, seed: int = 0) -> tuple[VectorIndex, np.ndarray]:
    vectors = np.random.default_rng(seed).normal(size=(len(TEXTS), dim)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(dim)
    index.add([f"p{i}" for i in range(len(TEXTS))], vectors, TEXTS)
    return index, vectors


def test_reciprocal_rank_fusion_adds_weighted_reciprocal_ranks():
    fused = reciprocal_rank_fusion([(["a", "b", "c"], 1.0), (["c", "a"], 0.5)], k=3, constant=10)
    assert [item for item, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 11 + 0.5 / 12)
    assert fused[1][1] == pytest.approx(1 / 13 + 0.5 / 11)
    assert reciprocal_rank_fusion([(["a", "b"], 1.0), (["b", "a"], 1.0)], k=1, constant=60)[0][0] == "a"  # tie: first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": ()}, "non-empty sequence"),
        ({"weights": 0.5}, "non-empty sequence"),
        ({"weights": (0.5, -1)}, "numbers >= 0"),
        ({"weights": (True,)}, "numbers >= 0"),
        ({"weights": (float("nan"),)}, "numbers >= 0"),
        ({"constant": 0}, "constant must be a positive integer"),
        ({"depth": 2.5}, "depth must be a positive integer"),
        ({"fusion": "max"}, "fusion must be one of"),
        ({"stopwords": "none"}, "stopwords must be one of"),
        ({"standalone": -1.0}, "standalone must be a number >= 0 or None"),
        ({"standalone": "2"}, "standalone must be a number >= 0 or None"),
    ],
)
def test_a_bad_hybrid_is_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Hybrid(**kwargs)


def test_hybrid_weights_are_stored_as_a_tuple_of_floats():
    assert Hybrid(weights=[1, 0.5]).weights == (1.0, 0.5) and Hybrid([1, 0.5]).texts == 2
    assert DEFAULT_HYBRID.texts == 2


def _rows(ranked: list[list[tuple[int, float]]]) -> list[list[int]]:
    return [[row for row, _ in hits] for hits in ranked]


def test_bm25_stems_words_and_drops_documents_that_share_none():
    stemmed, plain = BM25Index(TEXTS), BM25Index(TEXTS, stem=False)
    assert _rows(stemmed.ranked(["training"], 5)) == [[4]]  # "training" and "trained" stem to "train"
    assert _rows(plain.ranked(["training"], 5)) == [[]]
    assert _rows(stemmed.ranked(["what did she die of", "zzz"], 5)) == [[2], []]
    assert all(score > 0 for _, score in stemmed.ranked(["radium radiation"], 5)[0])


def test_the_longer_stop_word_list_drops_question_words_and_pronouns():
    assert sorted(_rows(BM25Index(TEXTS, stopwords="en").ranked(["who was she"], 5))[0]) == [0, 2]  # not Lucene's
    assert _rows(BM25Index(TEXTS).ranked(["who was she"], 5)) == [[]]  # NLTK's list, the default
    with pytest.raises(ValueError, match="stopwords must be one of"):
        BM25Index(TEXTS, stopwords="klingon")


def test_convex_fusion_sums_normalised_scores():
    vector = [("a", 0.9), ("b", 0.5), ("c", 0.1)]  # min-max: 1, 0.5, 0
    words = [("c", 4.0), ("b", 1.0)]  # divided by the best: 1, 0.25
    fused = convex_fusion([(vector, 1.0, False), (words, 0.8, True)], k=3)
    assert [item for item, _ in fused] == ["a", "c", "b"]
    assert [score for _, score in fused] == pytest.approx([1.0, 0.8, 0.5 + 0.2])
    assert Hybrid(weights=(0.8,), fusion="convex").fuse(vector, [words], 3) == fused


def test_a_hybrid_search_lifts_the_passage_that_shares_the_question_words():
    index, vectors = _index()
    query = vectors[1] + 0.05  # the cat passage, by far, for the vector
    dense = index.search(query, k=5)[0]
    assert dense[0].id == "p1" and dense[0].score == pytest.approx(float(vectors[1] @ query), rel=1e-5)
    assert index.search(query, k=5, texts=None)[0] == dense
    assert index.search(query, k=5, texts=["anything"], hybrid=None)[0] == dense
    hybrid = Hybrid(weights=(2.0,), constant=20)
    hits = index.search(query, k=5, texts=["What did she die of?"], hybrid=hybrid)[0]
    assert hits[0].id == "p2" and hits[0].text == TEXTS[2]
    vector_rank = [h.id for h in dense].index("p2") + 1
    assert hits[0].score == pytest.approx(1 / (20 + vector_rank) + 2.0 / 21)
    assert {h.id for h in hits} == {f"p{i}" for i in range(5)}  # every passage is still ranked, once


def test_a_lone_question_is_weighed_by_the_standalone_weight():
    vector = [("a", 0.9), ("b", 0.5)]
    words = [("b", 3.0), ("a", 1.0)]
    hybrid = Hybrid(weights=(0.5, 0.25), standalone=2.0, constant=20)
    lone = dict(hybrid.fuse(vector, [words], 2))
    assert lone == pytest.approx({"a": 1 / 21 + 2.0 / 22, "b": 1 / 22 + 2.0 / 21})
    # with the message before it the conversation weights apply, the standalone weight not at all
    two = dict(hybrid.fuse(vector, [words, []], 2))
    assert two == pytest.approx({"a": 1 / 21 + 0.5 / 22, "b": 1 / 22 + 0.5 / 21})
    assert Hybrid(weights=(0.5, 0.25)).fuse(vector, [words], 2) == Hybrid(weights=(0.5,)).fuse(vector, [words], 2)


def test_the_earlier_user_message_counts_with_its_own_weight():
    index, vectors = _index()
    query = vectors[1]
    texts = [["When did it happen?", "Tell me about Marie Curie"]]  # newest first
    assert index.search(query, k=1, texts=texts, hybrid=Hybrid(weights=(0.5, 3.0)))[0][0].id == "p0"
    assert index.search(query, k=1, texts=texts, hybrid=Hybrid(weights=(0.5, 0.0)))[0][0].id == "p1"


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ("a question", "one per query vector"),
        (["one", "two"], "list of 1 entries"),
        ([3], "must be a query string or a list of strings"),
        ([["a", 3]], "must be a query string or a list of strings"),
        ([["a", "b", "c"]], "holds 3 query texts but the Hybrid has 2 weight"),
    ],
)
def test_bad_query_texts_are_refused(texts, message):
    index, vectors = _index()
    with pytest.raises(ValueError, match=message):
        index.search(vectors[0], k=2, texts=texts)


def test_the_lexical_index_follows_adds_and_deletes():
    index, vectors = _index()
    assert index.search(vectors[0], k=1, texts=["zebra"], hybrid=Hybrid(weights=(5.0,)))[0][0].id == "p0"
    index.add(["z"], vectors[3:4] * -1, ["A zebra grazed."])
    assert index.search(vectors[0], k=1, texts=["zebra"], hybrid=Hybrid(weights=(5.0,)))[0][0].id == "z"
    index.delete("z")
    assert "z" not in {h.id for h in index.search(vectors[0], k=10, texts=["zebra"])[0]}


def test_hybrid_searches_are_safe_beside_adds():
    index, vectors = _index()
    errors, stop = [], threading.Event()

    def search():
        try:
            while not stop.is_set():
                hits = index.search(vectors[:2], k=3, texts=["Curie", ["died", "radium"]])
                assert all(len(h) == 3 for h in hits)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(40):
        index.add([f"n{i}"], vectors[i % 5 : i % 5 + 1], [f"note {i} on radium"])
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert index.search(vectors[0], k=1, texts=["note 39"], hybrid=Hybrid(weights=(9.0,)))[0][0].id == "n39"


def test_lexical_queries_are_the_last_user_messages_newest_first():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who was Marie Curie?"},
        {"role": "assistant", "content": "A physicist."},
        {"role": "user", "content": "What did she die of?"},
    ]
    assert lexical_queries(messages) == ["What did she die of?", "Who was Marie Curie?"]
    assert lexical_queries(messages, 1) == ["What did she die of?"]
    assert lexical_queries(messages[:2], 3) == ["Who was Marie Curie?"]
    with pytest.raises(ConversationError):
        lexical_queries([])


def _story_data() -> RetrievalData:
    corpus = [
        {"id": "s1#0", "text": "Marie Curie was born in Warsaw."},
        {"id": "s1#1", "text": "Her husband Pierre worked with her."},
        {"id": "s2#0", "text": "Pierre, Pierre, Pierre: a cat named Pierre."},
    ]
    queries = [
        {
            "id": "q1",
            "messages": [{"role": "user", "content": "Who was Pierre?"}],
            "question": "Who was Pierre?",
            "story_id": "s1",
        }
    ]
    return RetrievalData("stories", corpus, queries, {"q1": {"s1#1": 1}})


def test_within_story_metrics_rank_only_the_conversations_own_story():
    data = _story_data()
    assert [c.tolist() for c in story_candidates(data)] == [[0, 1]]
    report = evaluate_systems(data, ["bm25-question"])["systems"]["bm25-question"]
    assert report["mrr@10"] == 0.5  # the other story's passage says Pierre more often
    assert report["within_story"]["mrr@10"] == 1.0
    plain = evaluate_systems(data, ["bm25-question"], within_story=False)["systems"]["bm25-question"]
    assert "within_story" not in plain
    no_story = RetrievalData("plain", data.corpus, [dict(data.queries[0], story_id="s9")], data.qrels)
    assert story_candidates(no_story) is None


def test_the_evaluations_hybrid_run_is_the_index_search():
    """eval's native-context scores what VectorIndex.search(texts=...) returns to a user."""
    index, vectors = _index()
    corpus = [{"id": f"p{i}", "text": t} for i, t in enumerate(TEXTS)]
    queries = [
        {"id": f"q{i}", "messages": [{"role": "user", "content": q}], "question": q}
        for i, q in enumerate(["What did she die of?", "marathon", "Paris"])
    ]
    inputs = EvalInputs(RetrievalData("d", corpus, queries, {}))
    inputs.__dict__["corpus_vectors"] = vectors  # the cached_property, as the teacher would fill it
    query_vectors = vectors[[1, 0, 2]] + 0.1
    texts = [[q["question"], "Marie Curie"] for q in queries]
    run = hybrid_run(inputs, query_vectors, texts, DEFAULT_HYBRID, k=4)
    hits = index.search(query_vectors, k=4, texts=texts)
    for qid, row in zip(inputs.query_ids, hits, strict=True):
        assert list(run[qid]) == [h.id for h in row]
        assert list(run[qid].values()) == pytest.approx([h.score for h in row])


def test_the_command_line_weights_build_the_hybrid_a_search_uses():
    import argparse

    from native_retriever.arguments import add_hybrid, hybrid_of

    parser = argparse.ArgumentParser()
    add_hybrid(parser)
    assert hybrid_of(parser.parse_args([])) == DEFAULT_HYBRID
    custom = hybrid_of(parser.parse_args(["--lexical-weights", "1", "0.5", "--standalone-weight", "4"]))
    assert custom.weights == (1.0, 0.5) and custom.standalone == 4.0 and custom.constant == DEFAULT_HYBRID.constant
    assert hybrid_of(parser.parse_args(["--lexical-weights", "0"])) is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--standalone-weight", "-1"])
