"""FAISS vector index that keeps string ids, texts and metadata beside the vectors.

Three kinds, all scored by inner product (pass unit-normalised vectors for cosine similarity):
``flat`` (exact), ``ivf`` (inverted lists, trained on the first ``add``) and ``hnsw`` (graph; deletions
are tombstones). :meth:`VectorIndex.save` writes a folder of ``index.faiss``, ``records.jsonl`` and
``index.json`` atomically; :meth:`VectorIndex.load` reads only JSON and the FAISS binary format.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .bm25 import DEFAULT_HYBRID, BM25Index, Hybrid
from .errors import DataFormatError, DimensionMismatchError, IndexFileError, NativeRetrieverError
from .files import MANIFEST, atomic_folder, check_output_folder, reading, verify_folder

__all__ = ["DEFAULT_HYBRID", "Hybrid", "SearchHit", "VectorIndex"]

FORMAT = "native-retriever-index"
VERSION = 1
KINDS = ("flat", "ivf", "hnsw")
INDEX_FILE = "index.faiss"
RECORDS_FILE = "records.jsonl"
META_FILE = "index.json"
#: FAISS k-means wants at least this many training points per inverted list.
MIN_POINTS_PER_LIST = 39
#: FAISS GPU indexes answer at most this many neighbours per query; larger k searches on the CPU.
GPU_MAX_K = 2048
_REBUILD_HINT = "rebuild the index (`native-retriever index`) or restore the folder from a backup"
_BASE_TYPES = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}


@dataclass(frozen=True)
class SearchHit:
    """One search result (``score`` is the inner product; ``get`` returns records with score 0.0)."""

    id: str
    text: str
    score: float
    metadata: dict = field(default_factory=dict, hash=False)


@dataclass(slots=True)
class _Record:
    row: int
    text: str
    metadata: dict


class VectorIndex:
    """Vectors in a FAISS index plus one record (id, text, metadata) per vector.

    String ids map to sequential int64 FAISS ids ("rows") that are never reused.

    * ``flat``: ``IndexFlatIP``, exact.
    * ``ivf``: ``IndexIVFFlat`` (inner product), trained on the vectors of the first non-empty ``add``
      with ``nlist = min(nlist, max(1, n // 39))`` lists, since k-means needs about 39 points per list;
      add the bulk of the corpus in the first call. ``nprobe`` is clipped to the number of lists.
    * ``hnsw``: ``IndexHNSWFlat`` (inner product; ``ef_construction`` defaults to 80, above faiss's 40,
      which loses recall with ``hnsw_m=32``). HNSW cannot remove vectors, so ``delete`` keeps a
      tombstone set: searches exclude tombstoned rows with a FAISS ID selector inside the graph search
      (so ``k`` live hits come back without over-fetching) and the results are filtered again. When the
      tombstones outnumber the live vectors the graph is rebuilt without them (:meth:`compact`).

    Flat and HNSW are wrapped in ``IndexIDMap2``; IVF stores the rows itself (``IndexIDMap2`` over
    IVF breaks on ``remove_ids``: IVF keeps its internal ids while the id map compacts). The CPU index
    is the source of truth and is what ``save`` writes; with ``use_gpu`` (default: when faiss has GPUs)
    flat/ivf searches run on a GPU copy that is refreshed after each change. ``info`` is free-form JSON
    metadata saved with the index (e.g. ``{"embedder": ...}``, named in dimension errors).

    Every method may be called from many threads: a readers-writer lock lets searches, reads and ``save``'s
    snapshot run side by side while ``add``, ``delete`` and ``compact`` run alone; GPU searches run alone too.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        nlist: int = 256,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 80,
        use_gpu: bool | None = None,
        info: dict | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        params = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search}
        for name, value in {**params, "ef_construction": ef_construction}.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._dim = int(dim)
        self._kind = kind
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)
        self.hnsw_m = int(hnsw_m)
        self.ef_search = int(ef_search)
        self.ef_construction = int(ef_construction)
        self.info: dict = dict(info or {})
        self._gpu_requested = use_gpu
        self._use_gpu = _resolve_gpu(kind, use_gpu)
        self._records: dict[str, _Record] = {}
        self._row_to_id: dict[int, str] = {}
        self._tombstones: set[int] = set()
        self._next_row = 0
        self._index = self._new_index(self.nlist)
        self._gpu_index: Any = None
        self._exclude: Any = None
        self._lexical: dict[str, tuple[BM25Index, list[str]]] = {}  # stop words -> BM25 over the records, lazily
        self._lock = _ReadWriteLock()  # searches and save's snapshot share it; add, delete and compact own it
        self._cache_lock = threading.Lock()  # the lazily built GPU copy and tombstone selector

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def kind(self) -> str:
        """``"flat"``, ``"ivf"`` or ``"hnsw"``."""
        return self._kind

    @property
    def use_gpu(self) -> bool:
        """Whether searches run on a GPU copy."""
        return self._use_gpu

    @property
    def ids(self) -> list[str]:
        """Live ids in insertion order."""
        with self._lock.read():
            return list(self._records)

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._records)

    def __contains__(self, id: object) -> bool:
        with self._lock.read():
            return id in self._records

    def __repr__(self) -> str:
        return f"VectorIndex(dim={self._dim}, kind={self._kind!r}, count={len(self)})"

    def get(self, id: str) -> SearchHit:
        """The stored record of ``id`` as a :class:`SearchHit` with score 0.0; KeyError if unknown."""
        with self._lock.read():
            rec = self._records.get(id)
        if rec is None:
            raise KeyError(f"no record with id {id!r} in the index")
        return SearchHit(id=id, text=rec.text, score=0.0, metadata=copy.deepcopy(rec.metadata))

    # ------------------------------------------------------------------ mutation
    def add(
        self,
        ids: Sequence[str],
        vectors: Any,
        texts: Sequence[str],
        metadatas: Sequence[dict] | None = None,
    ) -> None:
        """Add records; all are validated before anything is stored.

        ``vectors``: float array or torch tensor of shape (n, dim). Raises ValueError for length
        mismatches, duplicate ids or non-finite vectors, DataFormatError for empty/non-string ids or
        texts and non-JSON metadata, DimensionMismatchError for a wrong dimension.
        """
        with self._lock.write():
            for name, seq in (("ids", ids), ("texts", texts)):
                if isinstance(seq, (str, bytes)):
                    raise DataFormatError(f"{name} must be a sequence of strings, not a single string")
            ids, texts = list(ids), list(texts)
            metas = [None] * len(ids) if metadatas is None else list(metadatas)
            x = self._matrix(vectors, "vectors to add")
            if not (len(ids) == len(texts) == len(metas) == x.shape[0]):
                raise ValueError(
                    f"add() got {len(ids)} ids, {x.shape[0]} vectors, {len(texts)} texts"
                    + ("" if metadatas is None else f" and {len(metas)} metadatas")
                    + "; they must have the same length"
                )
            seen: set[str] = set()
            clean_metas: list[dict] = []
            for id_, text, meta in zip(ids, texts, metas, strict=True):
                if not isinstance(id_, str) or not id_:
                    raise DataFormatError(f"ids must be non-empty strings, got {id_!r}")
                if id_ in seen or id_ in self._records:
                    where = "twice in this call" if id_ in seen else "already in the index"
                    raise ValueError(f"duplicate id {id_!r}: it is {where}; delete it first to replace it")
                seen.add(id_)
                if not isinstance(text, str):
                    raise DataFormatError(f"record {id_!r} has a text of type {type(text).__name__}, not str")
                if not text.strip():
                    raise DataFormatError(f"record {id_!r} has an empty text")
                clean_metas.append(_clean_metadata(id_, meta))
            bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
            if bad.size:
                raise ValueError(f"the vector of record {ids[bad[0]]!r} contains NaN or infinite values")
            n = len(ids)
            if n == 0:
                return
            if not self._index.is_trained:
                self._train(x)
            rows = np.arange(self._next_row, self._next_row + n, dtype=np.int64)
            self._index.add_with_ids(x, rows)
            for id_, text, meta, row in zip(ids, texts, clean_metas, rows.tolist(), strict=True):
                self._records[id_] = _Record(row=row, text=text, metadata=meta)
                self._row_to_id[row] = id_
            self._next_row += n
            self._changed()

    def delete(self, ids: Iterable[str] | str) -> int:
        """Delete records and return how many were removed.

        Unknown ids raise KeyError naming them, and then nothing is removed. A single string is one id.
        """
        with self._lock.write():
            wanted = list(dict.fromkeys([ids] if isinstance(ids, str) else ids))
            missing = [i for i in wanted if i not in self._records]
            if missing:
                shown = ", ".join(repr(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
                raise KeyError(f"{len(missing)} unknown id(s), nothing was deleted: {shown}")
            if not wanted:
                return 0
            rows = np.fromiter((self._records[i].row for i in wanted), dtype=np.int64, count=len(wanted))
            if self._kind == "hnsw":
                self._tombstones.update(rows.tolist())
            else:
                removed = self._index.remove_ids(rows)
                if removed != len(rows):  # pragma: no cover - records and faiss out of sync
                    raise NativeRetrieverError(f"faiss removed {removed} of {len(rows)} vectors")
            for id_, row in zip(wanted, rows.tolist(), strict=True):
                del self._records[id_]
                del self._row_to_id[row]
            self._changed()
            if len(self._tombstones) > len(self._records):
                self._compact()
            return len(wanted)

    def compact(self) -> None:
        """Rebuild an HNSW graph without its tombstoned vectors (no-op for other kinds)."""
        with self._lock.write():
            self._compact()

    def _compact(self) -> None:
        if self._kind != "hnsw" or not self._tombstones:
            return
        rows = faiss.vector_to_array(self._index.id_map)
        base = self._base()
        vectors = base.reconstruct_n(0, base.ntotal)
        keep = ~np.isin(rows, np.fromiter(self._tombstones, dtype=np.int64))
        index = self._new_index(self.nlist)
        if keep.any():
            index.add_with_ids(np.ascontiguousarray(vectors[keep]), np.ascontiguousarray(rows[keep]))
        self._index = index
        self._tombstones.clear()
        self._changed()

    # ------------------------------------------------------------------ search
    def search(
        self,
        query_vectors: Any,
        k: int = 10,
        *,
        texts: Sequence[str | Sequence[str]] | None = None,
        hybrid: Hybrid | None = DEFAULT_HYBRID,
    ) -> list[list[SearchHit]]:
        """Top-``k`` hits per query, best first; a 1-d vector is one query (still a list of one list).

        ``texts``: per query vector, its query text or texts (for a conversation, its last user messages newest
        first: ``conversation.lexical_queries``); the vector ranking is then fused with BM25 on them as ``hybrid``
        says (:class:`Hybrid`; None: the vectors alone) and each hit's ``score`` is its fused score. Without texts,
        ``score`` is the inner product. The BM25 index over the records is built on the first such search after a
        change.

        Safe to call from many threads: CPU searches run side by side, GPU searches one at a time (a faiss GPU
        index and its resources are not thread-safe).
        """
        with self._lock.write() if self._use_gpu else self._lock.read():
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
                raise ValueError(f"k must be a positive integer, got {k!r}")
            q = self._matrix(query_vectors, "query vector")
            if texts is None or hybrid is None:
                return self._vector_search(q, int(k))
            return self._hybrid_search(q, int(k), self._query_texts(texts, q.shape[0], hybrid), hybrid)

    @staticmethod
    def _query_texts(texts: Any, queries: int, hybrid: Hybrid) -> list[list[str]]:
        """``texts`` as one list of strings per query, checked against the queries and the hybrid's weights."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) != queries:
            raise ValueError(
                f"texts must be a list of {queries} entries, one per query vector (a query string or a list of "
                f"them), got {texts if isinstance(texts, str) else type(texts).__name__}"
                + (f" of {len(texts)}" if isinstance(texts, Sequence) and not isinstance(texts, str) else "")
            )
        out = [[t] if isinstance(t, str) else list(t) if isinstance(t, Sequence) else None for t in texts]
        for i, entry in enumerate(out):
            if entry is None or not all(isinstance(t, str) for t in entry):
                raise ValueError(f"texts[{i}] must be a query string or a list of strings, got {texts[i]!r}")
            if len(entry) > hybrid.texts:
                raise ValueError(
                    f"texts[{i}] holds {len(entry)} query texts but the Hybrid has {hybrid.texts} weight(s); pass at "
                    f"most {hybrid.texts} or give Hybrid(weights=...) one weight per text"
                )
        return out

    def _hybrid_search(self, q: np.ndarray, k: int, texts: list[list[str]], hybrid: Hybrid) -> list[list[SearchHit]]:
        dense = self._vector_search(q, max(k, hybrid.depth))
        with self._cache_lock:
            if hybrid.stopwords not in self._lexical:
                ids = list(self._records)
                texts_ = [self._records[i].text for i in ids]
                self._lexical[hybrid.stopwords] = (BM25Index(texts_, stopwords=hybrid.stopwords), ids)
            lexical, ids = self._lexical[hybrid.stopwords]
        flat = [t for entry in texts for t in entry]
        ranked = iter(lexical.ranked(flat, hybrid.depth))
        results = []
        for hits, entry in zip(dense, texts, strict=True):
            words = [[(ids[r], s) for r, s in next(ranked)] for _ in entry]
            fused = hybrid.fuse([(h.id, h.score) for h in hits], words, k)
            by_id = {h.id: h for h in hits}
            results.append([self._hit(id_, score, by_id.get(id_)) for id_, score in fused])
        return results

    def _hit(self, id_: str, score: float, hit: SearchHit | None) -> SearchHit:
        if hit is not None:
            return SearchHit(id=hit.id, text=hit.text, score=score, metadata=hit.metadata)
        rec = self._records[id_]
        return SearchHit(id=id_, text=rec.text, score=score, metadata=copy.deepcopy(rec.metadata))

    def _vector_search(self, q: np.ndarray, k: int) -> list[list[SearchHit]]:
        bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
        if bad.size:
            raise ValueError(f"query vector {int(bad[0])} contains NaN or infinite values")
        if not self._records or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])]
        fetch = min(int(k), len(self._records))
        if self._tombstones:
            with self._cache_lock:  # searches share the lock: the lazy selector is built once
                if self._exclude is None:
                    batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
                    self._exclude = (batch, faiss.IDSelectorNot(batch))
            params = faiss.SearchParametersHNSW(sel=self._exclude[1], efSearch=max(self.ef_search, fetch))
            scores, rows = self._index.search(q, fetch, params=params)
        else:
            scores, rows = self._search_index(fetch).search(q, fetch)
        results: list[list[SearchHit]] = []
        for score_row, id_row in zip(scores.tolist(), rows.tolist(), strict=True):
            hits: list[SearchHit] = []
            for score, row in zip(score_row, id_row, strict=True):
                id_ = self._row_to_id.get(row) if row >= 0 else None
                if id_ is None:  # faiss padding (-1) or a tombstoned row
                    continue
                rec = self._records[id_]
                hits.append(SearchHit(id=id_, text=rec.text, score=float(score), metadata=copy.deepcopy(rec.metadata)))
            results.append(hits[:k])
        return results

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to the folder ``path`` atomically (``files.atomic_folder``) and return it.

        A crash or error leaves the previous folder as it was; a folder the package did not write is refused
        (IndexFileError) before anything is written. Other threads may add, delete and search meanwhile: the
        snapshot is taken under the index's lock and written outside it.
        """
        target = check_output_folder(path, "index")
        try:
            info = json.loads(json.dumps(self.info, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise NativeRetrieverError(f"index info is not JSON-serialisable: {exc}") from None
        with self._lock.read():  # a consistent snapshot: no add/delete runs while it is taken
            data = faiss.serialize_index(self._index)
            records = dict(self._records)
            state = {"count": len(records), "next_row": self._next_row, "deleted_rows": sorted(self._tombstones)}
            params = {name: getattr(self, name) for name in ("nlist", "nprobe", "hnsw_m", "ef_search")}
            params["ef_construction"] = self.ef_construction
        with atomic_folder(target, "index") as tmp:
            sha = {INDEX_FILE: _write_file(tmp / INDEX_FILE, [memoryview(data)])}
            sha[RECORDS_FILE] = _write_records(tmp / RECORDS_FILE, records)
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "dim": self._dim,
                "kind": self._kind,
                "count": state["count"],
                **params,
                "next_row": state["next_row"],
                "deleted_rows": state["deleted_rows"],
                "faiss_version": faiss.__version__,
                "info": info,
                "sha256": sha,
            }
            _write_file(tmp / META_FILE, [json.dumps(meta, indent=2, ensure_ascii=False).encode() + b"\n"])
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], use_gpu: bool | None = None) -> VectorIndex:
        """Read an index folder written by :meth:`save`; any problem raises IndexFileError.

        A save into the folder from another thread or process waits until the load has read it.
        """
        with reading(path, "index") as folder:
            return cls._read(folder, use_gpu)

    @classmethod
    def _read(cls, folder: Path, use_gpu: bool | None) -> VectorIndex:
        if not folder.is_dir():
            raise IndexFileError(
                f"no index folder at {folder}; build one with `native-retriever index` or `VectorIndex.save`"
            )
        meta_path = folder / META_FILE
        meta = _read_meta(meta_path)
        dim, kind, count = meta["dim"], meta["kind"], meta["count"]
        deleted = set(meta["deleted_rows"])
        if deleted and kind != "hnsw":
            raise _corrupt(meta_path, f"deleted_rows must be empty for a {kind} index")

        index_path = folder / INDEX_FILE
        data = _read_checked(index_path, meta["sha256"][INDEX_FILE])
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except Exception as exc:
            raise _corrupt(index_path, f"faiss cannot read it ({str(exc).splitlines()[0][:200]})") from None
        wrapped = kind != "ivf"
        if wrapped and not isinstance(index, faiss.IndexIDMap2):
            raise _corrupt(index_path, f"it holds a {type(index).__name__}, expected IndexIDMap2")
        base = faiss.downcast_index(index.index) if wrapped else index
        if not isinstance(base, _BASE_TYPES[kind]) or base.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise _corrupt(index_path, f"it holds a {type(base).__name__}, not an inner-product {kind} index")
        if index.d != dim:
            raise _corrupt(index_path, f"it holds {index.d}-d vectors but {META_FILE} says {dim}")
        if index.ntotal != count + len(deleted):
            raise _corrupt(
                index_path, f"it holds {index.ntotal} vectors but {META_FILE} expects {count + len(deleted)}"
            )

        records_path = folder / RECORDS_FILE
        records = _parse_records(records_path, _read_checked(records_path, meta["sha256"][RECORDS_FILE]))
        if len(records) != count:
            raise _corrupt(records_path, f"it has {len(records)} records but {META_FILE} says {count}")
        rows = {rec.row for rec in records.values()}
        if rows & deleted or set(_stored_rows(index).tolist()) != rows | deleted:
            raise _corrupt(records_path, f"its rows do not match the vectors in {INDEX_FILE}")
        if rows and max(rows | deleted) >= meta["next_row"]:
            raise _corrupt(meta_path, "next_row is not above every stored row")

        manifest = verify_folder(folder, "index", trusted=(INDEX_FILE, RECORDS_FILE))  # those two: checked above
        if manifest and any(manifest["files"].get(name) != meta["sha256"][name] for name in (INDEX_FILE, RECORDS_FILE)):
            raise _corrupt(meta_path, f"its sha256 entries differ from the folder's manifest ({MANIFEST})")
        nlist = base.nlist if kind == "ivf" and base.is_trained else meta["nlist"]
        obj = cls(
            dim,
            kind,
            nlist=nlist,
            nprobe=meta["nprobe"],
            hnsw_m=meta["hnsw_m"],
            ef_search=meta["ef_search"],
            ef_construction=meta["ef_construction"],
            use_gpu=use_gpu,
            info=meta["info"],
        )
        obj._apply_search_params(index)
        obj._index = index
        obj._records = records
        obj._row_to_id = {rec.row: id_ for id_, rec in records.items()}
        obj._tombstones = deleted
        obj._next_row = meta["next_row"]
        return obj

    # ------------------------------------------------------------------ internals
    def _new_index(self, nlist: int) -> Any:
        if self._kind == "ivf":
            quantizer = faiss.IndexFlatIP(self._dim)
            index = faiss.IndexIVFFlat(quantizer, self._dim, nlist, faiss.METRIC_INNER_PRODUCT)
            quantizer.this.disown()
            index.own_fields = True
        else:
            if self._kind == "flat":
                base = faiss.IndexFlatIP(self._dim)
            else:
                base = faiss.IndexHNSWFlat(self._dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                base.hnsw.efConstruction = self.ef_construction
            index = faiss.IndexIDMap2(base)
        self._apply_search_params(index)
        return index

    def _base(self) -> Any:
        return self._index if self._kind == "ivf" else faiss.downcast_index(self._index.index)

    def _apply_search_params(self, index: Any) -> None:
        base = index if self._kind == "ivf" else faiss.downcast_index(index.index)
        if self._kind == "ivf":
            base.nprobe = min(self.nprobe, base.nlist)
        elif self._kind == "hnsw":
            base.hnsw.efSearch = self.ef_search

    def _train(self, x: np.ndarray) -> None:
        nlist = max(1, min(self.nlist, x.shape[0] // MIN_POINTS_PER_LIST))
        index = self._index if nlist == self._base().nlist else self._new_index(nlist)
        index.train(x)
        self._index = index
        self.nlist = nlist

    def _changed(self) -> None:
        self._gpu_index = None
        self._exclude = None
        self._lexical = {}

    def _search_index(self, k: int) -> Any:
        if not self._use_gpu or k > GPU_MAX_K:
            return self._index
        if self._gpu_index is None:
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self._index)
            except Exception as exc:
                if self._gpu_requested:
                    raise
                warnings.warn(f"faiss GPU search unavailable ({exc}); searching on the CPU", stacklevel=3)
                self._use_gpu = False
                return self._index
        return self._gpu_index

    def _matrix(self, vectors: Any, what: str) -> np.ndarray:
        if hasattr(vectors, "detach"):  # torch tensor (any dtype/device)
            vectors = vectors.detach().cpu().float().numpy()
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(0, self._dim) if x.size == 0 else x.reshape(1, -1)
        if x.ndim != 2:
            raise ValueError(f"{what} must have shape (n, {self._dim}) or ({self._dim},), got {x.shape}")
        if x.shape[1] != self._dim:
            built = self.info.get("embedder") or self.info.get("teacher")
            source = f" (built with {built})" if built else ""
            raise DimensionMismatchError(
                f"{what} has dimension {x.shape[1]} but the index holds {self._dim}-d vectors{source}; "
                "embed with the same teacher/head the index was built with"
            )
        return np.ascontiguousarray(x)


# ---------------------------------------------------------------------- helpers
class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers. Not re-entrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_GPU_RESOURCES: Any = None


def _gpu_count() -> int:
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - broken CUDA install
        return 0


def _gpu_resources() -> Any:
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def _resolve_gpu(kind: str, use_gpu: bool | None) -> bool:
    if kind == "hnsw":
        if use_gpu:
            raise ValueError("kind='hnsw' runs on the CPU only; use kind='flat' or 'ivf' for GPU search")
        return False
    if use_gpu is None:
        return _gpu_count() > 0
    if use_gpu and _gpu_count() == 0:
        raise NativeRetrieverError(
            "use_gpu=True but this faiss has no GPU support or sees no GPU; install faiss-gpu "
            "(`pip install native-retriever[gpu]`) or pass use_gpu=None"
        )
    return bool(use_gpu)


def _clean_metadata(id_: str, meta: Any) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise DataFormatError(f"metadata of record {id_!r} must be a dict, got {type(meta).__name__}")
    try:  # store the JSON form so that a saved and reloaded index returns the same metadata
        return json.loads(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"metadata of record {id_!r} is not JSON-serialisable: {exc}") from None


def _write_file(path: Path, chunks: Iterable[bytes | memoryview]) -> str:
    """Write chunks, fsync, and return the sha256 hex digest of what was written."""
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for chunk in chunks:
            digest.update(chunk)
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def _write_records(path: Path, records: dict[str, _Record]) -> str:
    lines = (
        json.dumps({"id": id_, "text": r.text, "metadata": r.metadata, "row": r.row}, ensure_ascii=False).encode()
        + b"\n"
        for id_, r in records.items()
    )
    return _write_file(path, lines)


def _stored_rows(index: Any) -> np.ndarray:
    """The int64 ids held by an ``IndexIDMap2`` or an ``IndexIVF``."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)
    invlists = index.invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
        for i in range(index.nlist)
        if invlists.list_size(i)
    ]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _corrupt(path: Path, why: str) -> IndexFileError:
    return IndexFileError(f"{path} is corrupt: {why}; {_REBUILD_HINT}")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IndexFileError(
            f"{path} is missing, so the index folder is incomplete or corrupt; {_REBUILD_HINT}"
        ) from None
    except OSError as exc:
        raise IndexFileError(f"cannot read {path} ({exc}); {_REBUILD_HINT}") from None


def _read_checked(path: Path, sha256: str) -> bytes:
    data = _read_bytes(path)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise _corrupt(path, f"its sha256 does not match {META_FILE} (truncated or edited?)")
    return data


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(_read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"it is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise _corrupt(path, f"its format field is {found!r}, expected {FORMAT!r}")
    version = meta.get("version")
    if _is_int(version, VERSION + 1):
        raise IndexFileError(f"{path} has index format version {version}; upgrade native-retriever to read it")
    if version != VERSION:
        raise _corrupt(path, f"unsupported version {version!r}")
    checks = {
        "dim": lambda v: _is_int(v, 1),
        "kind": lambda v: v in KINDS,
        "count": lambda v: _is_int(v, 0),
        "nlist": lambda v: _is_int(v, 1),
        "nprobe": lambda v: _is_int(v, 1),
        "hnsw_m": lambda v: _is_int(v, 1),
        "ef_search": lambda v: _is_int(v, 1),
        "ef_construction": lambda v: _is_int(v, 1),
        "next_row": lambda v: _is_int(v, 0),
        "deleted_rows": lambda v: isinstance(v, list) and all(_is_int(r, 0) for r in v),
        "info": lambda v: isinstance(v, dict),
        "sha256": lambda v: (
            isinstance(v, dict) and all(isinstance(v.get(name), str) for name in (INDEX_FILE, RECORDS_FILE))
        ),
    }
    for name, ok in checks.items():
        if name not in meta:
            raise _corrupt(path, f"the field {name!r} is missing")
        if not ok(meta[name]):
            raise _corrupt(path, f"the field {name!r} has an invalid value {meta[name]!r}")
    return meta


def _parse_records(path: Path, data: bytes) -> dict[str, _Record]:
    records: dict[str, _Record] = {}
    rows: set[int] = set()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise _corrupt(path, f"it is not UTF-8 ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _corrupt(path, f"line {lineno} is not valid JSON ({exc})") from None
        if not (
            isinstance(obj, dict)
            and isinstance(obj.get("id"), str)
            and isinstance(obj.get("text"), str)
            and isinstance(obj.get("metadata"), dict)
            and _is_int(obj.get("row"), 0)
        ):
            raise _corrupt(path, f"line {lineno} is not an {{id, text, metadata, row}} record")
        if obj["id"] in records or obj["row"] in rows:
            raise _corrupt(path, f"line {lineno} repeats id {obj['id']!r} or row {obj['row']}")
        records[obj["id"]] = _Record(row=obj["row"], text=obj["text"], metadata=obj["metadata"])
        rows.add(obj["row"])
    return records
