"""The shipped-head registry: the head made for the loaded LLM is picked by its fingerprint (NativeEmbedder, the CLI,
evaluate), an LLM without one gets the train-head command, and a head for SmolLM2 on Qwen (and the reverse) is
refused. Tiny random Llama (SmolLM2's architecture) and Qwen2 models stand in for the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import native_retriever.heads as heads_mod
from native_retriever import NativeEmbedder
from native_retriever.cli import main
from native_retriever.embedder import DEFAULT_HEAD
from native_retriever.errors import IncompatibleHeadError, NoShippedHeadError
from native_retriever.evaluation import DEFAULT_QUERY_HEAD
from native_retriever.heads import HeadConfig, ProjectionHead, shipped_head_for, shipped_heads
from native_retriever.models import QWEN_HUB_ID, QWEN_LLM, llm_info

QUESTION = [{"role": "user", "content": "What can I see at the Zorblat festival?"}]
# The real Qwen2.5-Coder-0.5B-Instruct's identity as a head trained on it would record it (sizes from DESIGN.md 3).
QWEN_INFO = {
    "name": QWEN_HUB_ID,
    "hidden_size": 896,
    "num_layers": 24,
    "vocab_size": 151_936,
    "fingerprint": [0.1] * 28,
}


def smollm2_info() -> dict:
    return dict(HeadConfig.load(DEFAULT_HEAD / "config.json").llm)


@pytest.fixture(scope="module")
def tiny_qwen(tiny_tokenizer):
    """A tiny random Qwen2 (the real Qwen's architecture: grouped KV heads, biases on q/k/v) of another width."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(5)
    config = Qwen2Config(
        vocab_size=len(tiny_tokenizer),
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.config.name_or_path = "tiny/qwen2"
    return model


@pytest.fixture
def registry(tmp_path, monkeypatch, tiny_head_factory, tiny_llm, make_tiny_llm):
    """A shipped-heads folder with a context and a query head for the tiny Llama, and a context head for another."""
    root = tmp_path / "shipped"
    tiny_head_factory("linear", seed=1).save_pretrained(root / "tiny-context")
    tiny_head_factory("linear", input_mode="query", seed=2).save_pretrained(root / "tiny-query")
    other = {**llm_info(make_tiny_llm(seed=7, initializer_range=0.05)), "name": "someone/other"}
    tiny_head_factory("linear", llm=other, seed=3).save_pretrained(root / "other-context")
    monkeypatch.setattr(heads_mod, "SHIPPED_HEADS", root)
    return root


def test_the_shipped_smollm2_heads_are_found_by_scanning_their_configs():
    found = {folder.name: config for folder, config in shipped_heads()}
    assert {"smollm2-minilm", "smollm2-minilm-query"} <= set(found)
    assert shipped_head_for(smollm2_info()) == DEFAULT_HEAD  # the default for SmolLM2 stays what it was
    assert shipped_head_for(smollm2_info(), "query") == DEFAULT_QUERY_HEAD
    rounded = {**smollm2_info(), "name": "/some/local/copy"}  # matched by fingerprint, whatever the name
    rounded["fingerprint"] = [x * 1.001 for x in rounded["fingerprint"]]
    assert shipped_head_for(rounded) == DEFAULT_HEAD


def test_a_head_folder_added_to_the_shipped_folder_is_picked_up_by_being_there(registry, tiny_llm):
    assert shipped_head_for(llm_info(tiny_llm)) == registry / "tiny-context"
    assert shipped_head_for(llm_info(tiny_llm), "query") == registry / "tiny-query"
    (registry / "tiny-context").rename(registry / "zz-tiny-context")
    assert shipped_head_for(llm_info(tiny_llm)) == registry / "zz-tiny-context"


def test_native_embedder_without_a_head_picks_the_one_made_for_its_llm(
    registry, tiny_llm, tiny_tokenizer, teacher, make_tiny_llm
):
    embedder = NativeEmbedder(tiny_llm, tiny_tokenizer, teacher=teacher)
    expected = ProjectionHead.from_pretrained(registry / "tiny-context")
    assert embedder.head.config.to_dict() == expected.config.to_dict()
    torch.testing.assert_close(embedder.head.state_dict(), expected.state_dict())
    assert embedder.embed_conversation(QUESTION).shape == (384,)
    other = make_tiny_llm(seed=7, initializer_range=0.05)
    assert NativeEmbedder(other, tiny_tokenizer, teacher=teacher).head.config.llm["name"] == "someone/other"


def test_an_llm_without_a_shipped_head_is_told_how_to_train_one(registry, tiny_qwen, tiny_tokenizer, teacher):
    with pytest.raises(NoShippedHeadError) as info:
        NativeEmbedder(tiny_qwen, tiny_tokenizer, teacher=teacher)
    message = str(info.value)
    assert "No shipped head was made for the LLM 'tiny/qwen2' (hidden_size 96, 3 layers" in message
    assert "`native-retriever train-head --llm FOLDER --train DATA... --dev DATA -o my-head`" in message
    assert "--head my-head" in message and isinstance(info.value, IncompatibleHeadError)
    with pytest.raises(NoShippedHeadError, match=f"train-head --llm {QWEN_LLM} .*--input-mode query --tokens query"):
        shipped_head_for(QWEN_INFO, "query")
    with pytest.raises(NoShippedHeadError, match="shipped context heads are for someone/other \\(other-context\\)"):
        shipped_head_for({**QWEN_INFO, "name": "/my/llm"}, "context")


def test_a_head_for_the_llama_refused_on_the_qwen_and_the_reverse(
    tiny_llm, tiny_qwen, tiny_tokenizer, tiny_head_factory, teacher
):
    llama_head = tiny_head_factory("linear")
    with pytest.raises(IncompatibleHeadError) as info:
        NativeEmbedder(tiny_qwen, tiny_tokenizer, head=llama_head, teacher=teacher)
    assert "but got 'tiny/qwen2'" in str(info.value) and "'hidden_size' differs (head: 64, given: 96)" in str(
        info.value
    )
    assert "train-head" in str(info.value)
    qwen_head = tiny_head_factory("linear", hidden_size=96, llm=llm_info(tiny_qwen))
    with pytest.raises(IncompatibleHeadError, match="'hidden_size' differs \\(head: 96, given: 64\\).*train-head"):
        NativeEmbedder(tiny_llm, tiny_tokenizer, head=qwen_head, teacher=teacher)
    assert NativeEmbedder(tiny_qwen, tiny_tokenizer, head=qwen_head, teacher=teacher).embed_conversation(QUESTION).any()


def test_the_shipped_smollm2_head_is_refused_on_qwen_and_a_qwen_head_on_smollm2():
    smollm2_head = ProjectionHead.from_pretrained(DEFAULT_HEAD)
    with pytest.raises(IncompatibleHeadError) as info:
        smollm2_head.check_compatible(llm=QWEN_INFO)
    message = str(info.value)
    assert "trained for LLM 'HuggingFaceTB/SmolLM2-135M-Instruct' but got 'Qwen/Qwen2.5-Coder-0.5B-Instruct'" in message
    assert "'hidden_size' differs (head: 576, given: 896)" in message and "train-head" in message
    config = {**smollm2_head.config.to_dict(), "hidden_size": 896, "llm": QWEN_INFO, "layers": [-1]}
    qwen_head = ProjectionHead(HeadConfig.from_dict(config))
    with pytest.raises(IncompatibleHeadError, match="'hidden_size' differs \\(head: 896, given: 576\\)"):
        qwen_head.check_compatible(llm=smollm2_info())


def test_the_cli_without_head_picks_the_one_made_for_the_llm_or_names_train_head(
    registry, tiny_llm_folder, tiny_qwen, tiny_tokenizer, tmp_path, capsys
):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Zorblat festival\n\nThe Zorblat festival in Quenwick has paper owl lanterns.\n")
    assert main(["index", str(docs), "-o", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "index"), "When is the Zorblat festival?", "--llm", tiny_llm_folder]) == 0
    assert "Zorblat festival" in capsys.readouterr().out
    qwen_folder = tmp_path / "tiny-qwen"
    tiny_qwen.save_pretrained(qwen_folder)
    tiny_tokenizer.save_pretrained(qwen_folder)
    assert main(["search", str(tmp_path / "index"), "When?", "--llm", str(qwen_folder)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: No shipped head was made for the LLM")
    assert f"train-head --llm {qwen_folder} --train" in error


def test_evaluate_without_heads_picks_the_shipped_ones_made_for_the_llm(registry, tiny_llm_folder, tiny_data_folder):
    from native_retriever.evaluation import evaluate

    report = evaluate(tiny_data_folder, ["native-context"], llm=tiny_llm_folder, max_queries=4)
    context = json.loads((registry / "tiny-context" / "config.json").read_text())
    assert report["heads"]["native-context"]["llm"] == context["llm"]
    (Path(registry) / "tiny-query" / "config.json").unlink()  # no query head for this LLM any more
    with pytest.raises(NoShippedHeadError, match="in input mode 'query'"):
        evaluate(tiny_data_folder, ["native-query"], llm=tiny_llm_folder, max_queries=4)
