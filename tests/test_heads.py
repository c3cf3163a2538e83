"""Tests for native_retriever.heads: unit outputs, masking, save/load round trip, corrupt folders, compatibility."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import native_retriever.heads as heads_mod
from native_retriever.errors import HeadConfigError, HeadFileError, IncompatibleHeadError
from native_retriever.files import sha256_file, verify_folder
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


# -- the config is validated when it is made or loaded (issue 14, defect 7) ----------------------------------------
SHIPPED = Path(heads_mod.__file__).parent / "heads"
SHIPPED_WEIGHTS = {  # sha256 of the shipped weights: the manifest was added without re-serialising them
    "smollm2-minilm": "73d35876d9ad10dee2187fdbc006cf2f8e15c3d3ed05447e7c449d5477927176",
    "smollm2-minilm-query": "aecbdaa36b50b367cbefccbb78b5ba0fedede1d93af44ae6d8bcd41b01358553",
}


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(layers="-1"), ["HeadConfig.layers='-1'", "list of LLM hidden-state indices"]),
        (lambda d: d.update(layers=[1.5]), ["HeadConfig.layers=[1.5]", "ints"]),
        (lambda d: d.update(layers=[7]), ["HeadConfig.layers=[7]", "layer 7 is outside an LLM with 2 layers"]),
        (lambda d: d.update(prompt_format={"max_tokens": "512"}), ["HeadConfig.prompt_format=", "'max_tokens': a pos"]),
        (lambda d: d.update(prompt_format={"window": 5}), ["HeadConfig.prompt_format={'window': 5}", "system_prompt"]),
        (lambda d: d.pop("llm"), ["HeadConfig.llm={}", "run unchecked on any llm"]),
        (lambda d: d["llm"].pop("fingerprint"), ["HeadConfig.llm['fingerprint']=None", "non-empty list of numbers"]),
        (lambda d: d.pop("teacher"), ["HeadConfig.teacher={}", "name, dim, fingerprint"]),
        (lambda d: d.update(version=3), ["config version 3", "reads version 1, 2", "Upgrade native-retriever"]),
        (lambda d: d.pop("version"), ["config version None", "reads version 1, 2"]),
        (lambda d: d.update(pool_windw=4), ["unknown keys 'pool_windw'", "typos"]),
        (lambda d: d.update(span="first"), ["HeadConfig.span='first'", "use one of all, last_user, last, query"]),
        (lambda d: d.update(max_input_tokens=0), ["HeadConfig.max_input_tokens=0", "positive int"]),
        (lambda d: d.update(dropout=1.5), ["HeadConfig.dropout=1.5", "[0, 1)"]),
    ],
    ids=["layers-str", "layers-float", "layers-range", "prompt-type", "prompt-key", "no-llm", "llm-key"]
    + ["no-teacher", "version-3", "no-version", "unknown-key", "span", "max-input", "dropout"],
)
def test_invalid_config_is_refused_at_load_naming_file_field_and_fix(tiny_head_factory, tmp_path, edit, expected):
    tiny_head_factory("linear").save_pretrained(tmp_path / "head")
    _edit_config(tmp_path / "head", edit)
    with pytest.raises(HeadFileError) as info:
        ProjectionHead.from_pretrained(tmp_path / "head")
    message = str(info.value)
    assert str(tmp_path / "head" / "config.json") + ":" in message  # the file, before its checksum is looked at
    for part in expected:
        assert part in message, (part, message)


def test_invalid_config_is_refused_when_it_is_made():
    llm = {"name": "m", "hidden_size": 8, "num_layers": 4, "vocab_size": 10, "fingerprint": [0.1]}
    teacher = {"name": "t", "dim": 4, "fingerprint": [0.2]}
    ok = dict(hidden_size=8, output_dim=4, llm=llm, teacher=teacher)
    assert HeadConfig(**ok, layers=[-5, 4]).layers == [-5, 4]  # hidden_states -L-1 .. L
    for bad, match in [
        ({"layers": "last"}, "HeadConfig.layers='last'"),
        ({"layers": [5]}, "layer 5 is outside an LLM with 4 layers"),
        ({"layers": [-6]}, "layer -6 is outside"),
        ({"prompt_format": {"max_tokens": -1}}, "HeadConfig.prompt_format="),
        ({"llm": {}}, "HeadConfig.llm={}"),
        ({"teacher": {**teacher, "dim": "4"}}, r"HeadConfig.teacher\['dim'\]='4'"),
        ({"hidden_size": True}, "HeadConfig.hidden_size=True; use a positive int"),
        ({"architecture": "transformer", "d_model": 10, "num_heads": 4}, "d_model=10 must be divisible"),
    ]:
        with pytest.raises(HeadConfigError, match=match):
            HeadConfig(**{**ok, **bad})
    assert issubclass(HeadConfigError, ValueError)


def test_version_1_config_with_the_old_tokens_key_still_loads(tiny_head_factory, tmp_path):
    head = tiny_head_factory("linear", span="last_user")
    head.save_pretrained(tmp_path / "head")
    assert json.loads((tmp_path / "head" / "config.json").read_text())["version"] == heads_mod.HEAD_VERSION

    def old_file(data):  # as the previous version wrote it (and without its manifest: a legacy folder)
        data.update(version=1, tokens=data.pop("span"))

    _edit_config(tmp_path / "head", old_file)
    (tmp_path / "head" / "native-retriever.json").unlink()
    loaded = ProjectionHead.from_pretrained(tmp_path / "head")
    assert loaded.config.span == "last_user" and not hasattr(loaded.config, "tokens")
    states, mask = _states([4])
    with torch.no_grad():
        torch.testing.assert_close(loaded(states, mask), head(states, mask), atol=0, rtol=0)
    _edit_config(tmp_path / "head", lambda d: d.update(span="all"))
    with pytest.raises(HeadFileError, match="both 'tokens' and 'span'"):
        ProjectionHead.from_pretrained(tmp_path / "head")


@pytest.mark.parametrize("name", sorted(SHIPPED_WEIGHTS))
def test_shipped_heads_load_and_verify_their_manifest(name):
    folder = SHIPPED / name
    manifest = verify_folder(folder, "head")
    assert manifest is not None and set(manifest["files"]) == {"config.json", "head.safetensors"}
    assert manifest["files"]["head.safetensors"] == SHIPPED_WEIGHTS[name] == sha256_file(folder / "head.safetensors")
    head = ProjectionHead.from_pretrained(folder)
    assert head.config.span == ("query" if name.endswith("query") else "all")
    assert head.config.llm["num_layers"] == 30 and head.config.teacher["dim"] == 384


def test_altered_weights_are_refused_at_load(tiny_head_factory, tmp_path):
    shipped = tmp_path / "shipped"
    shutil.copytree(SHIPPED / "smollm2-minilm", shipped)
    tiny_head_factory("linear").save_pretrained(tmp_path / "saved")
    for folder in (shipped, tmp_path / "saved"):
        weights = bytearray((folder / "head.safetensors").read_bytes())
        weights[-3] ^= 0x01  # one bit of one weight: the file still parses and loads
        (folder / "head.safetensors").write_bytes(bytes(weights))
        with pytest.raises(HeadFileError) as info:
            ProjectionHead.from_pretrained(folder)
        assert "head.safetensors does not match its sha256" in str(info.value)
        assert "retrain the head" in str(info.value)
    (shipped / "native-retriever.json").unlink()  # a head saved before manifests existed still loads
    assert ProjectionHead.from_pretrained(shipped).config.architecture == "attention"


def test_layers_are_checked_against_the_bound_llm_even_unchecked(tiny_llm, tiny_tokenizer, tiny_head_factory, teacher):
    from native_retriever.embedder import NativeEmbedder

    bigger = {**tiny_head_factory("linear").config.llm, "num_layers": 30, "name": "bigger-llm"}
    head = tiny_head_factory("linear", llm=bigger, layers=[20])
    with pytest.raises(IncompatibleHeadError, match="'num_layers' differs"):
        NativeEmbedder(tiny_llm, tiny_tokenizer, head=head, teacher=teacher)
    with pytest.raises(IncompatibleHeadError, match="layer 20 is outside an LLM with 2 layers"):
        NativeEmbedder(tiny_llm, tiny_tokenizer, head=head, teacher=teacher, check_compatible=False)
