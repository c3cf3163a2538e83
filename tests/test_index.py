"""Tests for native_retriever.index (random vectors, CPU faiss)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import faiss
import numpy as np
import pytest

import native_retriever.index as index_mod
from native_retriever.errors import DataFormatError, DimensionMismatchError, IndexFileError
from native_retriever.index import SearchHit, VectorIndex

DIM = 32
KINDS = ["flat", "ivf", "hnsw"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int = DIM, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    return _unit(centers[rng.integers(clusters, size=n)] + 0.35 * rng.normal(size=(n, dim)))


def _build(kind: str, n: int = 2000, **kwargs) -> tuple[VectorIndex, np.ndarray, list[str]]:
    x = _clustered(n)
    ids = [f"doc{i}" for i in range(n)]
    idx = VectorIndex(DIM, kind, **kwargs)
    idx.add(ids, x, [f"text of {i}" for i in ids], [{"n": i, "tags": ["a", i % 3]} for i in range(n)])
    return idx, x, ids


def _queries(n: int = 50, seed: int = 1) -> np.ndarray:
    return _clustered(n, seed=seed)


def _result_ids(results: list[list[SearchHit]]) -> list[list[str]]:
    return [[h.id for h in hits] for hits in results]


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[VectorIndex, np.ndarray, list[str]]]:
    return {kind: _build(kind) for kind in KINDS}


# ---------------------------------------------------------------------- search quality
def test_flat_search_is_exact_and_returns_records():
    idx, x, ids = _build("flat", n=300)
    q = _queries(10)
    results = idx.search(q, k=5)
    expected = np.argsort(-(q @ x.T), axis=1)[:, :5]
    brute_scores = np.take_along_axis(q @ x.T, expected, axis=1)
    assert _result_ids(results) == [[ids[j] for j in row] for row in expected]
    for hits, scores in zip(results, brute_scores, strict=True):
        assert [h.score for h in hits] == pytest.approx(scores.tolist(), abs=1e-5)
        for h in hits:
            n = int(h.id[3:])
            assert h.text == f"text of doc{n}"
            assert h.metadata == {"n": n, "tags": ["a", n % 3]}
    assert len(idx) == 300 and idx.ids == ids and idx.dim == DIM and idx.kind == "flat"
    assert idx.get("doc7") == SearchHit("doc7", "text of doc7", 0.0, {"n": 7, "tags": ["a", 1]})


def test_hits_do_not_share_stored_metadata():
    idx, x, _ = _build("flat", n=20)
    idx.search(x[0], k=1)[0][0].metadata["n"] = "changed"
    assert idx.get("doc0").metadata["n"] == 0


def test_one_dimensional_query_and_small_k():
    idx, x, ids = _build("flat", n=20)
    results = idx.search(x[3], k=50)
    assert len(results) == 1 and len(results[0]) == 20 and results[0][0].id == ids[3]


def test_empty_index_returns_empty_lists():
    for kind in KINDS:
        assert VectorIndex(DIM, kind).search(_queries(3), k=4) == [[], [], []]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_at_10(built, kind):
    exact, _, _ = built["flat"]
    approx, _, _ = built[kind]
    q = _queries(50)
    truth = _result_ids(exact.search(q, k=10))
    found = _result_ids(approx.search(q, k=10))
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.9, recall


def test_ivf_nlist_rule_and_small_first_add():
    idx, _, _ = _build("ivf", n=2000)
    assert idx.nlist == 2000 // 39
    small = VectorIndex(DIM, "ivf", nlist=256)
    x = _clustered(5)
    small.add(list("abcde"), x, ["t"] * 5)
    assert small.nlist == 1
    assert small.search(x[2], k=1)[0][0].id == "c"
    small.add(["f"], x[:1] * -1, ["t"])  # later adds reuse the trained lists
    assert len(small) == 6


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    x = _clustered(10)
    idx = VectorIndex(DIM)
    idx.add([str(i) for i in range(10)], torch.from_numpy(x).to(torch.bfloat16).requires_grad_(), ["t"] * 10)
    assert idx.search(torch.from_numpy(x[4]), k=1)[0][0].id == "4"


# ---------------------------------------------------------------------- delete
@pytest.mark.parametrize("kind", KINDS)
def test_delete_removes_from_results(kind):
    idx, x, ids = _build(kind, n=500)
    q = x[:5]
    before = _result_ids(idx.search(q, k=10))
    gone = [row[0] for row in before]
    assert idx.delete(gone) == len(set(gone))
    after = _result_ids(idx.search(q, k=10))
    assert all(len(row) == 10 for row in after)
    assert not set(gone) & {i for row in after for i in row}
    assert len(idx) == 500 - len(set(gone))
    assert idx.ids == [i for i in ids if i not in set(gone)]
    with pytest.raises(KeyError):
        idx.get(gone[0])
    idx.add([gone[0]], x[0], ["back again"])  # a deleted id can be added again
    assert idx.search(x[0], k=1)[0][0].text == "back again"


def test_results_stay_exact_after_delete():
    # IndexIDMap2 over IVF would return wrong ids after remove_ids; probing every list must match numpy.
    flat, x, ids = _build("flat", n=1000)
    ivf, _, _ = _build("ivf", n=1000, nprobe=10_000)
    for idx in (flat, ivf):
        idx.delete(ids[::3])
    keep = np.array([i for i in range(1000) if i % 3])
    q = _queries(20)
    expected = [[ids[keep[j]] for j in row] for row in np.argsort(-(q @ x[keep].T), axis=1)[:, :10]]
    assert _result_ids(flat.search(q, k=10)) == expected
    assert _result_ids(ivf.search(q, k=10)) == expected


def test_hnsw_compacts_when_tombstones_outnumber_live_vectors():
    idx, x, ids = _build("hnsw", n=300)
    idx.delete(ids[:100])
    assert idx._index.ntotal == 300
    idx.delete(ids[100:200])
    assert idx._index.ntotal == 100 and len(idx) == 100
    hits = idx.search(x[250], k=200)[0]
    assert len(hits) == 100 and hits[0].id == "doc250"


def test_delete_unknown_id_removes_nothing():
    idx, _, ids = _build("flat", n=10)
    with pytest.raises(KeyError, match="nope"):
        idx.delete([ids[0], "nope"])
    assert len(idx) == 10 and ids[0] in idx
    assert idx.delete("doc1") == 1 and idx.delete([]) == 0


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind):
    idx, x, ids = _build(kind, n=600)
    idx.info["embedder"] = "teacher-x"
    idx.delete(ids[:3])
    folder = idx.save(tmp_path / "idx")
    assert sorted(os.listdir(folder)) == ["index.faiss", "index.json", "native-retriever.json", "records.jsonl"]
    meta = json.loads((folder / "index.json").read_text())
    assert meta["format"] == "native-retriever-index" and meta["count"] == 597 and meta["kind"] == kind
    loaded = VectorIndex.load(folder)
    q = _queries(20)
    assert loaded.search(q, k=10) == idx.search(q, k=10)
    assert loaded.ids == idx.ids and loaded.info == {"embedder": "teacher-x"}
    for attr in ("dim", "kind", "nlist", "nprobe", "ef_search", "ef_construction"):
        assert getattr(loaded, attr) == getattr(idx, attr)
    loaded.add(["new"], x[0], ["new text"])  # rows keep counting after a load
    assert loaded.search(x[0], k=1)[0][0].id in {"new", ids[0]}
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_save_replaces_an_existing_index(tmp_path):
    idx, _, ids = _build("flat", n=50)
    idx.save(tmp_path / "idx")
    idx.delete(ids[:10])
    idx.save(tmp_path / "idx")
    assert len(VectorIndex.load(tmp_path / "idx")) == 40
    assert os.listdir(tmp_path) == ["idx"]


def test_save_refuses_to_replace_a_non_index_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("keep me")
    with pytest.raises(IndexFileError, match="refusing"):
        _build("flat", n=5)[0].save(tmp_path / "stuff")
    assert (tmp_path / "stuff" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("target", ["serialize", "records"])
def test_failed_save_leaves_previous_index_intact(tmp_path, monkeypatch, target):
    idx, x, ids = _build("flat", n=100)
    folder = idx.save(tmp_path / "idx")
    snapshot = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    q = _queries(5)
    expected = idx.search(q, k=5)
    idx.delete(ids[:50])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    if target == "serialize":
        monkeypatch.setattr(faiss, "serialize_index", boom)
    else:
        monkeypatch.setattr(index_mod, "_write_records", boom)
    with pytest.raises(OSError, match="disk full"):
        idx.save(folder)
    assert os.listdir(tmp_path) == ["idx"]  # no temp or backup folder left behind
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == snapshot
    assert VectorIndex.load(folder).search(q, k=5) == expected


@pytest.fixture
def saved(tmp_path):
    idx, _, _ = _build("flat", n=40)
    return idx.save(tmp_path / "idx")


def _rewrite_sha(folder, name):
    meta = json.loads((folder / "index.json").read_text())
    meta["sha256"][name] = index_mod.hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "index.json").write_text(json.dumps(meta))


def test_load_missing_folder(tmp_path):
    with pytest.raises(IndexFileError, match="VectorIndex.save") as err:
        VectorIndex.load(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


@pytest.mark.parametrize("fix_sha", [False, True])
def test_load_truncated_faiss_file(saved, fix_sha):
    path = saved / "index.faiss"
    path.write_bytes(path.read_bytes()[:100])
    if fix_sha:  # gets past the checksum, so faiss itself has to fail
        _rewrite_sha(saved, "index.faiss")
    with pytest.raises(IndexFileError, match=r"index\.faiss is corrupt.*rebuild"):
        VectorIndex.load(saved)


@pytest.mark.parametrize("fix_sha", [False, True])
def test_load_edited_records(saved, fix_sha):
    path = saved / "records.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    if fix_sha:
        _rewrite_sha(saved, "records.jsonl")
    with pytest.raises(IndexFileError, match=r"records\.jsonl is corrupt.*rebuild"):
        VectorIndex.load(saved)


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"format": "something-else", "version": 1}), json.dumps([1, 2])],
)
def test_load_bad_index_json(saved, content):
    (saved / "index.json").write_text(content)
    with pytest.raises(IndexFileError, match=r"index\.json is corrupt.*rebuild"):
        VectorIndex.load(saved)


def test_load_bad_field_and_missing_file(saved):
    meta = json.loads((saved / "index.json").read_text())
    (saved / "index.json").write_text(json.dumps({**meta, "count": 41}))
    with pytest.raises(IndexFileError, match="corrupt"):
        VectorIndex.load(saved)
    (saved / "index.json").write_text(json.dumps({**meta, "dim": "32"}))
    with pytest.raises(IndexFileError, match="'dim'"):
        VectorIndex.load(saved)
    (saved / "index.json").write_text(json.dumps(meta))
    (saved / "records.jsonl").unlink()
    with pytest.raises(IndexFileError, match=r"records\.jsonl is missing"):
        VectorIndex.load(saved)


# ---------------------------------------------------------------------- validation
def test_wrong_dimension_names_both_dimensions():
    idx, _, _ = _build("flat", n=10)
    with pytest.raises(DimensionMismatchError) as err:
        idx.search(np.ones(16, dtype=np.float32))
    assert "16" in str(err.value) and "32-d" in str(err.value)
    idx.info["embedder"] = "teacher-x"
    with pytest.raises(DimensionMismatchError, match="teacher-x"):
        idx.add(["z"], np.ones((1, 48)), ["t"])
    with pytest.raises(DimensionMismatchError, match="48"):
        VectorIndex(DIM).search(np.ones((2, 48)))


def test_add_validation():
    idx, x, _ = _build("flat", n=5)
    with pytest.raises(ValueError, match="'doc3'"):
        idx.add(["doc3"], x[:1], ["t"])
    with pytest.raises(ValueError, match="'dup'"):
        idx.add(["dup", "dup"], x[:2], ["t", "t"])
    with pytest.raises(DataFormatError, match="'e'"):
        idx.add(["e"], x[:1], [""])
    with pytest.raises(DataFormatError, match="'e'"):
        idx.add(["e"], x[:1], [None])
    with pytest.raises(ValueError, match="same length"):
        idx.add(["a", "b"], x[:1], ["t", "t"])
    with pytest.raises(ValueError, match="NaN"):
        idx.add(["nan"], np.full((1, DIM), np.nan), ["t"])
    with pytest.raises(DataFormatError, match="JSON"):
        idx.add(["m"], x[:1], ["t"], [{"obj": object()}])
    assert len(idx) == 5


@pytest.mark.parametrize("k", [0, -1])
def test_k_must_be_positive(k):
    with pytest.raises(ValueError, match="k must be"):
        _build("flat", n=5)[0].search(_queries(1), k=k)


def test_constructor_validation():
    with pytest.raises(ValueError, match="kind"):
        VectorIndex(DIM, "lsh")
    with pytest.raises(ValueError, match="dim"):
        VectorIndex(0)
    with pytest.raises(ValueError, match="CPU only"):
        VectorIndex(DIM, "hnsw", use_gpu=True)


# ---------------------------------------------------------------------- threads
BATCH = 50  # records are added and deleted 50 at a time, so a consistent view always holds a multiple of 50


@pytest.fixture
def fast_switching():
    """Switch threads every 10 microseconds, so that unguarded reads land inside another thread's add."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def _run_threads(workers: list, seconds: float) -> None:
    stop, errors = threading.Event(), []

    def loop(work):
        try:
            while not stop.is_set():
                work()
        except BaseException as exc:  # reported below with its traceback
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck (deadlock?)"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_concurrent_add_delete_search_and_save(tmp_path, kind, fast_switching):
    """Agents and servers share one index: add, delete, search, read and save at once from many threads."""
    k = 10
    idx = VectorIndex(DIM, kind, use_gpu=False)
    base = [f"base{i}" for i in range(4 * BATCH)]  # never deleted: every search has at least k live records
    idx.add(base, _clustered(len(base)), [f"text of {i}" for i in base])
    ever = set(base)  # ids are put here before they are added
    added: list[list[str]] = []
    counter = iter(range(10**9))
    queries = _queries(4, seed=3)
    saves = [0]

    def add():
        ids = [f"n{next(counter)}" for _ in range(BATCH)]
        ever.update(ids)
        idx.add(ids, _clustered(BATCH, seed=len(ever)), [f"text of {i}" for i in ids], [{"id": i} for i in ids])
        added.append(ids)

    def delete():
        if len(added) > 2:
            idx.delete(added.pop(0))

    def check(hits: list[SearchHit]) -> None:
        assert len(hits) == k and len({h.id for h in hits}) == k
        assert all(h.id in ever and h.text == f"text of {h.id}" for h in hits)
        assert all(a.score >= b.score - 1e-5 for a, b in zip(hits, hits[1:]))

    def search():
        for hits in idx.search(queries, k=k):
            check(hits)

    def read():
        ids, count = idx.ids, len(idx)
        assert len(ids) % BATCH == 0 and count % BATCH == 0, (len(ids), count)
        assert "base0" in idx and idx.get("base1").text == "text of base1"
        assert repr(idx).startswith(f"VectorIndex(dim={DIM}")

    def save():
        folder = idx.save(tmp_path / f"idx{saves[0] % 2}")
        saves[0] += 1
        loaded = VectorIndex.load(folder)
        assert len(loaded) % BATCH == 0 and set(base) <= set(loaded.ids) and set(loaded.ids) <= ever
        for hits in loaded.search(queries, k=k):
            check(hits)

    _run_threads([add, add, delete, search, search, read, save], seconds=1.5)
    assert saves[0] > 0 and len(added) > 2
    live = set(idx.ids)
    assert live == set(base) | {i for ids in added for i in ids} and len(idx) == len(live)
    assert sorted(os.listdir(tmp_path)) == ["idx0", "idx1"][: min(saves[0], 2)]


def test_gpu_searches_run_one_at_a_time(monkeypatch):
    """A faiss GPU index and its resources are not thread-safe: GPU searches take the index's lock alone (tested
    with a stand-in GPU index that counts the searches inside it)."""
    idx, x, ids = _build("flat", n=300, use_gpu=False)
    queries = _queries(8)
    expected = idx.search(queries, k=5)
    inside, peak, guard = [0], [0], threading.Lock()

    class FakeGpuIndex:
        def __init__(self, cpu_index):
            self.cpu_index = cpu_index

        def search(self, q, k):
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            try:
                time.sleep(0.002)  # a GPU search releases the GIL too
                return self.cpu_index.search(q, k)
            finally:
                with guard:
                    inside[0] -= 1

    monkeypatch.setattr(index_mod.faiss, "index_cpu_to_gpu", lambda res, dev, index: FakeGpuIndex(index), raising=False)
    monkeypatch.setattr(index_mod, "_gpu_resources", lambda: None)
    monkeypatch.setattr(idx, "_use_gpu", True)
    calls = [0]

    def search():
        assert idx.search(queries, k=5) == expected
        calls[0] += 1

    _run_threads([search] * 4, seconds=0.5)
    assert calls[0] > 8 and peak[0] == 1, (calls[0], peak[0])
    assert isinstance(idx._gpu_index, FakeGpuIndex)  # the searches did run on the (stand-in) GPU copy
