"""Tests for native_retriever.heads: unit outputs, masking, save/load round trip, corrupt folders, compatibility."""

from __future__ import annotations

import json

import pytest
import torch

import native_retriever.heads as heads_mod
from native_retriever.errors import HeadFileError, IncompatibleHeadError
from native_retriever.heads import HeadConfig, ProjectionHead

ARCHITECTURES = ["linear", "attention", "transformer"]


def _states(lengths: list[int], hidden: int = 64, seed: int = 0, pad_to: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    longest = pad_to or max(lengths)
    states = torch.randn(len(lengths), longest, hidden, generator=generator)
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return states, mask


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_outputs_are_unit_vectors_of_output_dim(tiny_head_factory, architecture):
    head = tiny_head_factory(architecture)
    states, mask = _states([5, 9, 1])
    with torch.no_grad():
        out = head(states, mask)
    assert out.shape == (3, 384)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_padding_does_not_change_output(tiny_head_factory, architecture):
    head = tiny_head_factory(architecture)
    states, mask = _states([4, 7])
    padded_states, padded_mask = _states([4, 7], pad_to=20)
    padded_states[:, :7] = states  # same real tokens, random garbage in the extra padding
    padded_states[0, 4:7] = 100.0  # even huge values in masked positions must not leak
    with torch.no_grad():
        torch.testing.assert_close(head(states, mask), head(padded_states, padded_mask), atol=1e-5, rtol=1e-4)
        # a row alone equals that row in the batch
        torch.testing.assert_close(head(states[:1, :4], mask[:1, :4]), head(states, mask)[:1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_round_trip(tiny_head_factory, tmp_path, architecture):
    head = tiny_head_factory(architecture, prompt_format={"system_prompt": "Be brief.", "max_tokens": 300})
    head.config.metrics = {"dev": {"recall@10": 0.5}}
    head.save_pretrained(tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [
        "config.json",
        "head.safetensors",
        "native-retriever.json",
    ]
    loaded = ProjectionHead.from_pretrained(tmp_path / "head")
    assert not loaded.training
    for name in ("llm", "teacher", "prompt_format", "architecture", "layers", "metrics", "hidden_size", "d_model"):
        assert getattr(loaded.config, name) == getattr(head.config, name), name
    states, mask = _states([3, 8])
    with torch.no_grad():
        torch.testing.assert_close(loaded(states, mask), head(states, mask), atol=0, rtol=0)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folders left


def test_save_overwrites_existing_head(tiny_head_factory, tmp_path):
    first, second = tiny_head_factory("linear", seed=1), tiny_head_factory("linear", seed=2)
    first.save_pretrained(tmp_path / "head")
    second.save_pretrained(tmp_path / "head")
    states, mask = _states([6])
    with torch.no_grad():
        torch.testing.assert_close(
            ProjectionHead.from_pretrained(tmp_path / "head")(states, mask), second(states, mask)
        )
    assert [p.name for p in tmp_path.iterdir()] == ["head"]


def test_missing_folder_or_file_raises_head_file_error(tiny_head_factory, tmp_path):
    with pytest.raises(HeadFileError) as info:
        ProjectionHead.from_pretrained(tmp_path / "nowhere")
    assert "config.json is missing" in str(info.value) and "train-head" in str(info.value)
    tiny_head_factory("linear").save_pretrained(tmp_path / "head")
    (tmp_path / "head" / "head.safetensors").unlink()
    with pytest.raises(HeadFileError) as info:
        ProjectionHead.from_pretrained(tmp_path / "head")
    assert "head.safetensors is missing" in str(info.value)


def test_invalid_json_raises_head_file_error(tiny_head_factory, tmp_path):
    tiny_head_factory("linear").save_pretrained(tmp_path / "head")
    (tmp_path / "head" / "config.json").write_text("{not json")
    with pytest.raises(HeadFileError) as info:
        ProjectionHead.from_pretrained(tmp_path / "head")
    assert "not valid JSON" in str(info.value) and "restore or retrain" in str(info.value)


def test_wrong_format_field_raises_head_file_error(tiny_head_factory, tmp_path):
    tiny_head_factory("linear").save_pretrained(tmp_path / "head")
    path = tmp_path / "head" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": "something-else"}))
    with pytest.raises(HeadFileError) as info:
        ProjectionHead.from_pretrained(tmp_path / "head")
    assert "not a native-retriever head config" in str(info.value)
    assert "native-retriever-head" in str(info.value)


@pytest.mark.parametrize("field", ["hidden_size", "architecture"])
def test_weights_not_matching_config_raise_head_file_error(tiny_head_factory, tmp_path, field):
    tiny_head_factory("linear").save_pretrained(tmp_path / "head")
    path = tmp_path / "head" / "config.json"
    data = json.loads(path.read_text())
    data[field] = 32 if field == "hidden_size" else "transformer"
    path.write_text(json.dumps(data))
    with pytest.raises(HeadFileError) as info:
        ProjectionHead.from_pretrained(tmp_path / "head")
    assert "does not match" in str(info.value) and "restore or retrain" in str(info.value)


def test_corrupt_weights_raise_head_file_error(tiny_head_factory, tmp_path):
    tiny_head_factory("linear").save_pretrained(tmp_path / "head")
    (tmp_path / "head" / "head.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(HeadFileError):
        ProjectionHead.from_pretrained(tmp_path / "head")


def test_failed_save_leaves_previous_head_intact(tiny_head_factory, tmp_path, monkeypatch):
    old, new = tiny_head_factory("transformer", seed=1), tiny_head_factory("transformer", seed=2)
    old.save_pretrained(tmp_path / "head")
    before = {p.name: p.read_bytes() for p in (tmp_path / "head").iterdir()}

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(heads_mod, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(tmp_path / "head")

    assert {p.name: p.read_bytes() for p in (tmp_path / "head").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["head"]  # the temporary folder is cleaned up
    states, mask = _states([5])
    with torch.no_grad():
        torch.testing.assert_close(ProjectionHead.from_pretrained(tmp_path / "head")(states, mask), old(states, mask))


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="architecture='mlp'; use one of linear, attention, transformer"):
        HeadConfig(hidden_size=8, output_dim=4, architecture="mlp")
    with pytest.raises(ValueError, match="span='query' needs input_mode='query'"):  # `tokens` is now `span`
        HeadConfig(hidden_size=8, output_dim=4, span="query")


# -- compatibility --------------------------------------------------------------------------------------------
def test_check_compatible_accepts_the_same_llm_and_teacher(tiny_head_factory, tiny_llm, teacher):
    from native_retriever.models import llm_info

    head = tiny_head_factory("linear")
    head.check_compatible(llm=llm_info(tiny_llm), teacher=teacher.info)
    bf16 = {**llm_info(tiny_llm), "name": "renamed copy"}
    bf16["fingerprint"] = [round(x * (1 + 1e-3), 6) for x in bf16["fingerprint"]]  # dtype rounding noise
    head.check_compatible(llm=bf16)


def test_check_compatible_refuses_another_llm_fingerprint(tiny_head_factory, make_tiny_llm):
    from native_retriever.models import llm_info

    head = tiny_head_factory("linear")
    other = {**head.config.llm, "name": "other-llm"}
    other["fingerprint"] = llm_info(make_tiny_llm(seed=1, initializer_range=0.05))["fingerprint"]
    with pytest.raises(IncompatibleHeadError) as info:
        head.check_compatible(llm=other)
    message = str(info.value)
    assert "LLM field 'fingerprint' differs" in message
    assert "'other-llm'" in message and "train-head" in message


def test_check_compatible_refuses_another_hidden_size(tiny_head_factory):
    head = tiny_head_factory("transformer")
    other = {**head.config.llm, "hidden_size": 96, "name": "bigger"}
    with pytest.raises(IncompatibleHeadError) as info:
        head.check_compatible(llm=other)
    assert "LLM field 'hidden_size' differs (head: 64, given: 96)" in str(info.value)


def test_check_compatible_refuses_another_teacher(tiny_head_factory, teacher):
    head = tiny_head_factory("linear")
    other = {**teacher.info, "dim": 768, "name": "big-teacher"}
    with pytest.raises(IncompatibleHeadError) as info:
        head.check_compatible(teacher=other)
    message = str(info.value)
    assert "teacher field 'dim' differs (head: 384, given: 768)" in message
    assert "Use the head trained for this teacher" in message
    assert isinstance(info.value, ValueError)


def test_pooled_transformer_reads_windows_from_the_end_and_ignores_padding(tiny_head_factory):
    head = tiny_head_factory("transformer", pool_window=4)
    states, mask = _states([10, 3])
    padded_states, padded_mask = _states([10, 3], pad_to=16)
    padded_states[:, :10] = states
    with torch.no_grad():
        out = head(states, mask)
        torch.testing.assert_close(out, head(padded_states, padded_mask), atol=1e-5, rtol=1e-4)
        pooled, used, _ = head.body.pool(states, mask)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    # 10 tokens -> windows [6:10], [2:6], [0:2]; the most recent window comes first
    torch.testing.assert_close(pooled[0, 0], states[0, 6:10].mean(0))
    torch.testing.assert_close(pooled[0, 2], states[0, 0:2].mean(0))
    assert used[0].tolist()[:4] == [True, True, True, False] and used[1].tolist()[:2] == [True, False]
