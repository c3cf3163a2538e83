"""Tests for native_retriever.files through the saves that use it (heads, latent adapters, indexes): a save replaces
only a folder the package wrote, leftovers of crashed saves never block, a save killed at any moment (kill -9) leaves
the complete old or the complete new version, and altered files are refused at load."""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import native_retriever.files as files
from native_retriever.errors import FolderFileError, HeadFileError, IndexFileError
from native_retriever.files import MANIFEST, read_manifest
from native_retriever.heads import HeadConfig, ProjectionHead
from native_retriever.index import VectorIndex
from native_retriever.latent import LatentEncoder

ROOT = Path(__file__).resolve().parent.parent


def head_config(hidden_size: int, output_dim: int, **training) -> HeadConfig:
    """A linear head's config with the identity sections a config needs (made-up LLM and teacher)."""
    llm = {"name": "llm", "hidden_size": hidden_size, "num_layers": 2, "vocab_size": 100, "fingerprint": [0.5]}
    teacher = {"name": "teacher", "dim": output_dim, "fingerprint": [0.5]}
    return HeadConfig(hidden_size, output_dim, architecture="linear", llm=llm, teacher=teacher, training=training)


def _head(seed: int = 0, **training) -> ProjectionHead:
    torch.manual_seed(seed)
    return ProjectionHead(head_config(16, 8, **training)).eval()


def _index(n: int = 20, seed: int = 0) -> VectorIndex:
    rng = np.random.default_rng(seed)
    idx = VectorIndex(8, "flat", use_gpu=False)
    idx.add([f"d{seed}-{i}" for i in range(n)], rng.normal(size=(n, 8)), [f"text {seed}-{i}" for i in range(n)])
    return idx


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_weights(a: ProjectionHead, b: ProjectionHead) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- defect 1: a save replaces only what the package wrote --------------------------------------------------------
SAVES = {
    "head": lambda path: _head().save_pretrained(path),
    "index": lambda path: _index().save(path),
    # refused before the adapter is touched, so no model is needed
    "latent-adapter": lambda path: LatentEncoder.save_pretrained(None, path),
}
USER_FOLDERS = {
    "source tree": {"src/main.py": "print('my program')\n", "README.md": "mine\n"},
    "unrelated index.json": {"index.json": '{"name": "my project"}\n'},
    "files named like an old index": {
        "index.json": '{"format": "my-format"}\n',
        "index.faiss": "not faiss\n",
        "records.jsonl": "{}\n",
    },
}


@pytest.mark.parametrize("folder", sorted(USER_FOLDERS))
@pytest.mark.parametrize("save", sorted(SAVES))
def test_saves_refuse_a_folder_the_package_did_not_write(tmp_path, save, folder):
    out = tmp_path / "out"
    for name, text in USER_FOLDERS[folder].items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _snapshot(out)
    with pytest.raises(FolderFileError, match=rf"{re.escape(str(out))} holds files native-retriever did not") as info:
        SAVES[save](out)
    assert "refusing to replace it" in str(info.value) and "Choose another output path" in str(info.value)
    assert _snapshot(out) == before and os.listdir(tmp_path) == ["out"]  # untouched, nothing written beside it


def test_saves_refuse_a_file_another_kind_and_a_package_folder_with_user_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HeadFileError, match="exists and is not a folder"):
        _head().save_pretrained(tmp_path / "notes.txt")
    _index().save(tmp_path / "idx")
    with pytest.raises(HeadFileError, match="a native-retriever index, not a head"):
        _head().save_pretrained(tmp_path / "idx")
    _head().save_pretrained(tmp_path / "head")
    (tmp_path / "head" / "my-notes.md").write_text("results of my run")
    with pytest.raises(HeadFileError, match=r"did not write \(my-notes.md\)"):
        _head(1).save_pretrained(tmp_path / "head")
    assert (tmp_path / "head" / "my-notes.md").read_text() == "results of my run"
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(VectorIndex.load(tmp_path / "idx")) == 20


def test_saves_replace_their_own_folders_and_fill_empty_ones(tmp_path):
    (tmp_path / "head").mkdir()
    (tmp_path / "idx").mkdir()
    _head(0).save_pretrained(tmp_path / "head")
    _index(seed=0).save(tmp_path / "idx")
    manifest = read_manifest(tmp_path / "head")
    assert manifest["kind"] == "head" and sorted(manifest["files"]) == ["config.json", "head.safetensors"]
    assert manifest["files"]["head.safetensors"] == files.sha256_file(tmp_path / "head" / "head.safetensors")
    assert read_manifest(tmp_path / "idx")["kind"] == "index"

    _head(1).save_pretrained(tmp_path / "head", extra_files={"training_log.json": "[]"})
    _index(n=5, seed=1).save(tmp_path / "idx")
    _head(2).save_pretrained(tmp_path / "head")  # a folder holding the extra file it wrote is still the package's
    assert _same_weights(ProjectionHead.from_pretrained(tmp_path / "head"), _head(2))
    assert VectorIndex.load(tmp_path / "idx").ids == [f"d1-{i}" for i in range(5)]
    assert sorted(os.listdir(tmp_path)) == ["head", "idx"]


def test_folders_the_previous_version_wrote_without_a_manifest_are_replaced(tmp_path):
    _head(0).save_pretrained(tmp_path / "head")
    _index().save(tmp_path / "idx")
    (tmp_path / "head" / MANIFEST).unlink()
    (tmp_path / "idx" / MANIFEST).unlink()
    assert _same_weights(ProjectionHead.from_pretrained(tmp_path / "head"), _head(0))  # still loads
    _head(1).save_pretrained(tmp_path / "head")
    _index(n=3, seed=1).save(tmp_path / "idx")
    assert _same_weights(ProjectionHead.from_pretrained(tmp_path / "head"), _head(1))
    assert len(VectorIndex.load(tmp_path / "idx")) == 3


# -- defect 2: leftovers of crashed saves never block -------------------------------------------------------------
LEFTOVERS = (".{}.tmp-k3j2_x9q", ".{}.old", ".{}.old-0123456789ab")  # a half-written save; backups of the old copy


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_leftovers_of_crashed_saves_are_ignored_at_load_and_cleaned_by_the_next_save(tmp_path, monkeypatch, exchange):
    monkeypatch.setattr(files, "_exchange_supported", exchange)
    _head(0).save_pretrained(tmp_path / "head")
    _index(seed=0).save(tmp_path / "idx")
    for name in ("head", "idx"):
        for pattern in LEFTOVERS:
            leftover = tmp_path / pattern.format(name)
            leftover.mkdir()
            (leftover / "index.faiss").write_bytes(b"\0" * 4096)  # partial
    assert _same_weights(ProjectionHead.from_pretrained(tmp_path / "head"), _head(0))
    assert len(VectorIndex.load(tmp_path / "idx")) == 20

    _head(1).save_pretrained(tmp_path / "head")
    _index(n=4, seed=1).save(tmp_path / "idx")
    assert sorted(os.listdir(tmp_path)) == ["head", "idx"]
    assert _same_weights(ProjectionHead.from_pretrained(tmp_path / "head"), _head(1))
    assert VectorIndex.load(tmp_path / "idx").ids == [f"d1-{i}" for i in range(4)]


def test_a_save_killed_between_its_two_renames_is_recovered_at_load(tmp_path):
    """Without renameat2 a save renames the old folder to a backup, then the new one in; a crash between the two
    leaves no folder at the path, and the complete backup is put back (a partial one never is)."""
    _head(0).save_pretrained(tmp_path / "head")
    _index(seed=0).save(tmp_path / "idx")
    for name in ("head", "idx"):
        os.rename(tmp_path / name, tmp_path / f".{name}.old-00aa11bb22cc")  # the first rename
        (tmp_path / f".{name}.tmp-abc").mkdir()  # the new version, not complete
    partial = tmp_path / ".head.old-ffffffffffff"  # an older, damaged backup is never restored
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    assert _same_weights(ProjectionHead.from_pretrained(tmp_path / "head"), _head(0))
    assert len(VectorIndex.load(tmp_path / "idx")) == 20
    assert (tmp_path / "head" / MANIFEST).is_file() and (tmp_path / "idx" / MANIFEST).is_file()
    _head(1).save_pretrained(tmp_path / "head")
    _index(seed=1).save(tmp_path / "idx")
    assert sorted(os.listdir(tmp_path)) == ["head", "idx"]


def test_altered_files_are_refused_at_load_naming_the_file(tmp_path):
    head = tmp_path / "head"
    _head(0).save_pretrained(head)
    weights = load_file(str(head / "head.safetensors"))
    weights["body.proj.weight"][0, 0] += 0.5  # still a valid file of the right shapes
    save_file(weights, str(head / "head.safetensors"))
    with pytest.raises(HeadFileError, match=r"head.safetensors does not match its sha256 in .*native-retriever.json"):
        ProjectionHead.from_pretrained(head)

    _head(0).save_pretrained(tmp_path / "head2")
    config = json.loads((tmp_path / "head2" / "config.json").read_text())
    config["training"] = {"data": "another"}
    (tmp_path / "head2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(HeadFileError, match=r"config.json does not match its sha256.*retrain the head"):
        ProjectionHead.from_pretrained(tmp_path / "head2")

    idx = _index().save(tmp_path / "idx")
    meta = json.loads((idx / "index.json").read_text())
    meta["info"] = {"teacher": "another"}
    (idx / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=r"index.json does not match its sha256.*rebuild the index"):
        VectorIndex.load(idx)


def test_loads_during_saves_read_one_whole_version(tmp_path):
    """A server reloading a head or an index while another thread (or process) saves it got a checksum error (the
    new files swapped in between two reads) telling it to rebuild a healthy index; loads now wait for the save."""
    heads, indexes = [_head(0, v=0), _head(1, v=1)], [_index(n=300, seed=0), _index(n=200, seed=1)]
    heads[0].save_pretrained(tmp_path / "head")
    indexes[0].save(tmp_path / "idx")
    stop, errors, counts = threading.Event(), [], {"saves": 0, "loads": 0}

    def save():
        while not stop.is_set():
            v = counts["saves"] % 2
            heads[v].save_pretrained(tmp_path / "head")
            indexes[v].save(tmp_path / "idx")
            counts["saves"] += 1

    def load():
        while not stop.is_set():
            try:
                head, idx = ProjectionHead.from_pretrained(tmp_path / "head"), VectorIndex.load(tmp_path / "idx")
                assert _same_weights(head, heads[head.config.training["v"]])
                assert idx.ids[0].startswith(("d0-", "d1-")) and len(idx) == {"d0-": 300, "d1-": 200}[idx.ids[0][:3]]
            except Exception as exc:
                errors.append(exc)
            counts["loads"] += 1

    threads = [threading.Thread(target=save), threading.Thread(target=load), threading.Thread(target=load)]
    for thread in threads:
        thread.start()
    stop.wait(1.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not errors, f"{len(errors)} of {counts['loads']} loads failed, the first: {errors[0]!r}"
    assert counts["saves"] > 2 and counts["loads"] > 2, counts


# -- defect 2: kill -9 at random moments ----------------------------------------------------------------------------
# A server process: imports once, saves the two reference versions of each kind and times a save, then for each
# "save KIND PATH LOG N EXCHANGE" forks a child that saves versions N, N+1, ... into PATH (version n: the data of
# reference n % 2, marked n) and appends n to LOG after each completed save, until it is killed.
# A latent training checkpoint's parts (a tiny LoRA-wrapped LLM, its optimizer with moments, a schedule): built the
# same way by the saving process and by the test, which loads each surviving checkpoint with load_checkpoint.
CHECKPOINT_PARTS = r"""
import warnings
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from native_retriever.latent.training import load_checkpoint, save_checkpoint

def checkpoint_parts():
    torch.manual_seed(0)
    tiny = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2)
    with warnings.catch_warnings():  # peft's own read of a deprecated transformers property
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(LlamaForCausalLM(tiny), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    encoder = type("Encoder", (), {"peft_model": peft_model})()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return encoder, optimizer, schedule
"""

SAVER = (
    CHECKPOINT_PARTS
    + r"""
import json, os, sys, time
import numpy as np, torch
torch.set_num_threads(1)
import native_retriever.files as files
from pathlib import Path
from native_retriever.heads import HeadConfig, ProjectionHead
from native_retriever.index import VectorIndex

encoder, optimizer, schedule = checkpoint_parts()
adapters = []  # version 1's adapter weights are version 0's, negated
for v in (0, 1):
    trained = [(n, p) for n, p in encoder.peft_model.named_parameters() if p.requires_grad]
    adapters.append({n: p.detach().clone() * (1 - 2 * v) for n, p in trained})

root = sys.argv[1]
heads, indexes = [], []
for v in (0, 1):
    torch.manual_seed(v)
    hidden, teacher = 128 * (v + 1), {"name": "teacher", "dim": 256, "fingerprint": [0.5]}
    llm = {"name": "llm", "hidden_size": hidden, "num_layers": 2, "vocab_size": 100, "fingerprint": [0.5]}
    heads.append(ProjectionHead(HeadConfig(hidden, 256, architecture="linear", llm=llm, teacher=teacher)))
    rng = np.random.default_rng(v)
    idx = VectorIndex(32, "flat", use_gpu=False)
    n = 3000 - 1000 * v
    idx.add([f"v{v}-{i}" for i in range(n)], rng.normal(size=(n, 32)), [f"text {v} {i}" for i in range(n)])
    indexes.append(idx)

def save(kind, n, path):
    if kind == "head":
        heads[n % 2].config.training = {"n": n}
        heads[n % 2].save_pretrained(path)
    elif kind == "checkpoint":
        with torch.no_grad():
            for name, p in encoder.peft_model.named_parameters():
                if p.requires_grad:
                    p.copy_(adapters[n % 2][name])
        save_checkpoint(Path(path), encoder, optimizer, schedule, {"n": n})
    else:
        indexes[n % 2].info = {"n": n}
        indexes[n % 2].save(path)

def first_save_in_a_child(kind, n, path):
    # seconds from fork to the end of the child's first save: how the killed saves below run
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        save(kind, n, path)
        os._exit(0)
    os.waitpid(pid, 0)
    return time.perf_counter() - start

timing = {}
for kind in ("head", "index", "checkpoint"):
    for v in (0, 1):
        save(kind, v, os.path.join(root, f"ref-{kind}-{v}"))
    runs = [first_save_in_a_child(kind, n, os.path.join(root, f"timing-{kind}")) for n in range(4)]
    timing[kind] = sum(runs) / len(runs)
print(json.dumps(timing), flush=True)
for line in sys.stdin:
    command, *args = line.split()
    if command == "wait":
        print(os.waitpid(int(args[0]), 0)[1], flush=True)
        continue
    kind, path, log, n, exchange = args
    pid = os.fork()
    if pid == 0:
        try:
            files._exchange_supported = exchange == "1"
            with open(log, "a") as handle:
                n = int(n)
                while True:
                    save(kind, n, path)
                    handle.write(f"{n}\n")
                    handle.flush()
                    n += 1
        finally:
            os._exit(3)
    print(pid, flush=True)
"""
)


def _ask(proc: subprocess.Popen, line: str | None = None, timeout: float = 30.0) -> str:
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the saving process did not answer {line!r} within {timeout} s"
    reply = proc.stdout.readline()
    assert reply, f"the saving process ended (exit code {proc.poll()})"
    return reply.strip()


_CHECKPOINT: dict = {}


def _checkpoint_parts():
    if not _CHECKPOINT:
        exec(CHECKPOINT_PARTS, _CHECKPOINT)
    return _CHECKPOINT["checkpoint_parts"]()


def _loaded_version(kind: str, target: Path, ref: dict[int, Path]) -> int | None:
    """The version at ``target`` after checking it is whole and equal to its reference; None when there is none."""
    try:
        if kind == "index":
            n = VectorIndex.load(target).info["n"]
            same = ("index.faiss", "records.jsonl")
        elif kind == "checkpoint":
            parts = _checkpoint_parts()
            n = _CHECKPOINT["load_checkpoint"](target, *parts)["n"]
            same = ("adapter.safetensors", "optimizer.safetensors")
        else:
            n = ProjectionHead.from_pretrained(target).config.training["n"]
            same = ("head.safetensors",)
    except (FolderFileError, FileNotFoundError):  # a checkpoint load of a missing folder finds no state.json
        if target.exists():
            raise
        return None
    assert sorted(os.listdir(target)) == sorted(os.listdir(ref[n % 2])), f"version {n} at {target} is not whole"
    for name in same:
        assert (target / name).read_bytes() == (ref[n % 2] / name).read_bytes(), f"{name} of version {n} differs"
    return n


def test_saves_killed_at_random_moments_leave_the_old_or_the_new_version(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"  # forked children must not inherit a thread pool
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    rng = random.Random(14)
    try:
        timing = json.loads(_ask(proc, timeout=180))
        for kind, kills in (("index", 30), ("head", 25), ("checkpoint", 20)):
            ref = {v: tmp_path / f"ref-{kind}-{v}" for v in (0, 1)}
            target, log = tmp_path / kind / "saved", tmp_path / f"{kind}.log"
            last, mid_save = None, 0
            target.parent.mkdir()
            for kill in range(kills):
                exchange = kill % 2  # renameat2, then two renames (recovered at load)
                start = 0 if last is None else last + 1
                pid = int(_ask(proc, f"save {kind} {target} {log} {start} {exchange}"))
                # before the first save ends, at any point of the following ones
                delay = rng.uniform(0.0, 2.5) * timing[kind] if kill else rng.uniform(0.0, 0.8) * timing[kind]
                select.select([], [], [], delay)
                os.kill(pid, signal.SIGKILL)
                status = int(_ask(proc, f"wait {pid}"))
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the saver failed ({status})"
                done = [int(n) for n in log.read_text().split()] if log.exists() else []
                leftovers = sorted(set(os.listdir(target.parent)) - {"saved"})
                mid_save += bool(leftovers)
                assert len(leftovers) <= 2, leftovers  # each save removes what the crashed one left
                n = _loaded_version(kind, target, ref)
                if n is None:
                    assert not done, f"kill {kill}: {target} is missing although version {done[-1]} was saved"
                    continue
                # the newest completed save, or the one the kill interrupted (it may have ended before the log)
                ended = [v for v in done if v >= start]
                allowed = {ended[-1] if ended else last, ended[-1] + 1 if ended else start}
                assert n in allowed, f"kill {kill}: version {n} at {target}, expected one of {sorted(allowed - {None})}"
                last = n
            assert last is not None and mid_save >= kills // 4, (kind, last, mid_save)
        _index(n=3).save(tmp_path / "index" / "saved")  # a normal save cleans every leftover
        assert os.listdir(tmp_path / "index") == ["saved"]
    finally:
        proc.kill()
        proc.wait()
