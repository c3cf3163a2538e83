"""train-head under torchrun and accelerate launch: two CPU processes on gloo cache exactly the one-process hidden
states (each rank its shards), train data-parallel to the one-process dev metric within noise, write the head once,
and a cache left incomplete by a dead rank is finished by a rerun with another number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from native_retriever.heads import ProjectionHead

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _shards(cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        f"{p.parent.name}/{p.name}": load_file(str(p))
        for p in sorted((cache / "states").glob("states-*/shard-*.safetensors"))
    }


COMMON = ["--epochs", "4", "--architecture", "linear", "--d-model", "32", "--batch-size", "8", "--lr", "0.003"]
COMMON += ["--max-tokens", "256", "--rank-top-k", "8", "--shard-size", "8"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs its ranks join gloo on the CPU
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
ACCELERATE += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def _common(data: str, llm: str) -> list[str]:
    return ["train-head", "--train", data, "--dev", data, "--llm", llm, *COMMON]


@pytest.fixture(scope="module")
def one_process(tiny_data_folder, tiny_llm_folder, tmp_path_factory) -> Path:
    one = tmp_path_factory.mktemp("one-process")
    common = _common(tiny_data_folder, tiny_llm_folder)
    _run([sys.executable, "-m", "native_retriever", *common, "--cache", str(one / "cache"), "-o", str(one / "head")])
    return one


def _launch_and_compare(launcher: list[str], one: Path, two: Path, common: list[str]) -> None:
    outputs = ["--cache", str(two / "cache"), "-o", str(two / "head")]
    launched = _run([*launcher, "-m", "native_retriever", *common, *outputs])
    assert launched.stdout.count('"dev"') == 1  # rank 0 alone reports

    single, sharded = _shards(one / "cache"), _shards(two / "cache")
    assert len(single) > 2 and single.keys() == sharded.keys()
    for name, tensors in single.items():
        assert all(torch.equal(tensors[k], sharded[name][k]) for k in tensors), name

    first, second = ProjectionHead.from_pretrained(one / "head"), ProjectionHead.from_pretrained(two / "head")
    assert (first.config.training["processes"], second.config.training["processes"]) == (1, 2)
    first, second = first.config.metrics["dev"]["recall@10"], second.config.metrics["dev"]["recall@10"]
    assert abs(first - second) <= 0.1, (first, second)
    assert json.loads((two / "head" / "training_log.json").read_text())  # written once, whole


@pytest.mark.slow
def test_two_gloo_processes_cache_the_same_states_and_train_to_the_same_dev_metric(
    one_process, tiny_data_folder, tiny_llm_folder, tmp_path
):
    common = _common(tiny_data_folder, tiny_llm_folder)
    two = tmp_path / "two"
    _launch_and_compare(TORCHRUN, one_process, two, common)

    # a rank that died mid-run leaves shards missing: one process finishes the cache, the same as before
    missing = next(iter(sorted((two / "cache" / "states").glob("states-*/shard-00001.*"))))
    for path in missing.parent.glob("shard-00001.*"):
        path.unlink()
    _run([sys.executable, "-m", "native_retriever", *common, "--cache", str(two / "cache"), "-o", str(two / "again")])
    assert _shards(two / "cache").keys() == _shards(one_process / "cache").keys()


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_data_parallel_training(
    one_process, tiny_data_folder, tiny_llm_folder, tmp_path
):
    pytest.importorskip("accelerate")
    _launch_and_compare(ACCELERATE, one_process, tmp_path / "two", _common(tiny_data_folder, tiny_llm_folder))
