"""Cache LLM hidden states and teacher vectors once, so head epochs cost only the head.

A hidden-state cache is a folder of shards (``shard-00000.safetensors`` + ``.json``), each holding, for a few hundred
conversations rendered by the shared formatter, only the token states the head reads: its window (``span``, at most
``max_input_tokens`` tokens, :func:`native_retriever.states.select_tokens`), in float16. Shards are memory-mapped,
never read whole, so a cache larger than RAM trains; finished shards are kept, so an interrupted run resumes.

Every cache folder is named by a digest of what it was computed from, never by the data folder's name: the
queries' content, the layers, the window, the prompt format and the tokenizer for hidden states; the corpus, the
queries, the teacher's identity, window and normalisation for teacher vectors. Edited data, or another folder of
the same name, gets a folder of its own; the same data under another name reuses the cache. A folder whose
manifest says it was built from another LLM's weights, for other layers or for another window is refused.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..conversation import PromptFormat, encode_conversation
from ..data import RetrievalData
from ..errors import NativeRetrieverError
from ..files import atomic_file
from ..models import fingerprints_match, llm_info
from ..states import select_tokens, token_states
from ..teacher import Teacher, encoding_spec, texts_digest
from .distributed import Ranks

#: Bumped when the shard layout changes (a cache of another format gets a folder of its own).
CACHE_FORMAT = 2


class HiddenStateCache(Sequence[torch.Tensor]):
    """The cached window states of many conversations: ``cache[i]`` is example i's (T, H) float16 tensor, read from
    its memory-mapped shard when asked for (only the pages touched come into RAM)."""

    def __init__(self, ids: list[str], spec: dict, shards: list, locations: torch.Tensor) -> None:
        self.ids, self.spec = ids, spec  # spec: the manifest's llm, layers, window, prompt format, ...
        self._shards = shards  # open safetensors files, one per shard
        self._locations = locations  # (n, 3): shard, first token row, end token row

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError("HiddenStateCache is indexed by one example number; use select() for several.") from None
        shard, start, end = self._locations[i].tolist()
        return self._shards[shard].get_slice("states")[start:end]

    def select(self, rows: Sequence[int]) -> HiddenStateCache:
        """A cache of examples ``rows`` (in that order), on the same shards."""
        rows = list(rows)
        return HiddenStateCache([self.ids[i] for i in rows], self.spec, self._shards, self._locations[rows])

    @property
    def tokens(self) -> int:
        """Window tokens stored for these examples."""
        return int((self._locations[:, 2] - self._locations[:, 1]).sum())

    @property
    def nbytes(self) -> int:
        """Bytes of float16 states stored for these examples (the shards' size, less their small headers)."""
        return self.tokens * 2 * int(self.spec["hidden_size"])


def concat_caches(caches: Sequence[HiddenStateCache]) -> HiddenStateCache:
    """One cache of all examples of ``caches``, in order (their shards stay where they are)."""
    shards, locations, ids = [], [], []
    for cache in caches:
        locations.append(cache._locations + torch.tensor([len(shards), 0, 0]))
        shards += cache._shards
        ids += cache.ids
    spec = caches[0].spec if caches else {}
    return HiddenStateCache(
        ids, spec, shards, torch.cat(locations) if locations else torch.zeros((0, 3), dtype=torch.long)
    )


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def queries_digest(queries: list[dict]) -> str:
    """The sha256 of the queries' ids, conversations and questions, in order."""
    return _json_digest([[q["id"], q["messages"], q["question"]] for q in queries])


def tokenizer_digest(tokenizer) -> str:
    """The sha256 of what tokenizing a conversation depends on: vocabulary, merges, special tokens, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else _json_digest(tokenizer.get_vocab())
    special = getattr(tokenizer, "all_special_tokens", [])
    return _json_digest([vocabulary, getattr(tokenizer, "chat_template", None), special])


def cache_spec(model, tokenizer, layers: Sequence[int], window: tuple[str, int], prompt_format: PromptFormat) -> dict:
    """What a hidden-state cache is computed from (its queries aside): checked whenever a cache is opened."""
    span, max_input_tokens = window
    return {
        "format": CACHE_FORMAT,
        "llm": llm_info(model),
        "hidden_size": int(model.config.hidden_size),
        "layers": list(layers),
        "window": {"span": span, "max_input_tokens": int(max_input_tokens)},
        "prompt_format": prompt_format.to_dict(),
        "tokenizer": tokenizer_digest(tokenizer),
    }


def cache_hidden_states(
    model,
    tokenizer,
    data: RetrievalData,
    root: str | os.PathLike,
    *,
    window: tuple[str, int],
    layers: list[int] | None = None,
    prompt_format: PromptFormat | None = None,
    batch_size: int = 4,
    shard_size: int = 256,
    ranks: Ranks | None = None,
) -> HiddenStateCache:
    """Compute (or resume) the hidden-state cache of ``data``'s queries and open it.

    ``window``: the head's ``(span, max_input_tokens)``; only those tokens' states are stored. Under several
    processes (``ranks``, :mod:`native_retriever.training.distributed`) shard ``n`` is computed by rank
    ``n % world``; all ranks wait for each other, then open every shard. Shard boundaries depend only on
    ``shard_size``, so a cache started with one number of processes is resumed and used by any other, and equals
    the one-process cache.
    """
    ranks = ranks or Ranks()
    layers = layers or [-1]
    fmt = prompt_format or PromptFormat()
    spec = cache_spec(model, tokenizer, layers, window, fmt)
    keyed = {**spec, "llm": spec["llm"]["name"], "queries": queries_digest(data.queries)}
    folder = Path(root) / f"states-{_key(keyed)}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        check_manifest(folder, spec)
    else:
        with atomic_file(manifest) as tmp:  # the data's name is recorded for people, never part of the key
            tmp.write_text(json.dumps({**spec, "queries": keyed["queries"], "data": data.name}, indent=2))
    shards = range(0, len(data.queries), shard_size)
    mine = [(n, start) for n, start in enumerate(shards) if n % ranks.world == ranks.rank]
    total = sum(len(data.queries[start : start + shard_size]) for _, start in mine)
    with tqdm(total=total, desc=f"Caching hidden states ({data.name})", unit="conv", disable=not total) as bar:
        for number, start in mine:
            path = folder / f"shard-{number:05d}.safetensors"
            chunk = data.queries[start : start + shard_size]
            if not _shard_done(path, chunk):
                _write_shard(model, tokenizer, chunk, fmt, layers, window, batch_size, path, bar)
            else:
                bar.update(len(chunk))
    ranks.barrier()  # every rank's shards are written
    for number, start in enumerate(shards):
        if not _shard_done(folder / f"shard-{number:05d}.safetensors", data.queries[start : start + shard_size]):
            raise NativeRetrieverError(
                f"Shard {number} of {folder} is missing or holds other conversations after every process finished; "
                "run the command again (finished shards are kept)."
            )
    return load_hidden_states(folder, shards=len(shards), expect=spec)


def check_manifest(folder: Path, spec: dict) -> dict:
    """The manifest of cache ``folder``; raises when it was built for another LLM, layers, window or format."""
    manifest = _read_manifest(folder)
    fields = ("format", "layers", "window", "prompt_format", "tokenizer")
    wrong = {
        name: f"cached {manifest.get(name)!r}, wanted {spec[name]!r}"
        for name in fields
        if manifest.get(name) != spec[name]
    }
    llm = manifest.get("llm") if isinstance(manifest.get("llm"), dict) else {}
    if not fingerprints_match(llm.get("fingerprint") or [], spec["llm"]["fingerprint"]):
        wrong = {"llm": f"cached from {llm.get('name')!r}, not these weights of {spec['llm']['name']!r}", **wrong}
    if wrong:
        details = "; ".join(f"{name}: {why}" for name, why in wrong.items())
        raise NativeRetrieverError(
            f"{folder} was built for another {', '.join(wrong)} ({details}); delete it or use another cache folder."
        )
    return manifest


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as error:
        raise NativeRetrieverError(
            f"{folder} is not a readable hidden-state cache (manifest.json: {error}); delete the folder and rerun."
        ) from error


def _shard_done(path: Path, chunk: list[dict]) -> bool:
    ids_path = path.with_suffix(".json")
    return path.is_file() and ids_path.is_file() and json.loads(ids_path.read_text()) == [q["id"] for q in chunk]


def _write_shard(model, tokenizer, queries, fmt, layers, window, batch_size, path: Path, bar) -> None:
    span, limit = window
    encoded = [encode_conversation(tokenizer, q["messages"], fmt, query=q["question"]) for q in queries]
    states: list[torch.Tensor] = [None] * len(encoded)  # type: ignore[list-item]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        # the window ends where the head stops reading: a prefill needs no more tokens than that
        spans = [select_tokens(encoded[i], span, limit) for i in rows]
        sequences = [encoded[i].input_ids[:end] for i, (_, end) in zip(rows, spans)]
        for row, (begin, _), state in zip(rows, spans, token_states(model, sequences, layers)):
            states[row] = state[begin:].to("cpu", torch.float16)
        bar.update(len(rows))
    lengths = torch.tensor([0] + [s.shape[0] for s in states])
    tensors = {"states": torch.cat(states), "offsets": torch.cumsum(lengths, 0)}
    # the ids first, so that a shard on disk always has its ids beside it (each file replaced atomically)
    with atomic_file(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps([q["id"] for q in queries]))
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp))


def load_hidden_states(
    folder: str | os.PathLike, shards: int | None = None, expect: dict | None = None
) -> HiddenStateCache:
    """Open the first ``shards`` shards (default: all) of a cache folder, memory-mapped, as one HiddenStateCache.

    ``expect``: a :func:`cache_spec`; a cache built for another LLM, layers, window or prompt format is refused."""
    folder = Path(folder)
    manifest = check_manifest(folder, expect) if expect is not None else _read_manifest(folder)
    if manifest.get("format") != CACHE_FORMAT:
        raise NativeRetrieverError(
            f"{folder} holds a hidden-state cache of an older layout; delete it (it is rebuilt on the next run)."
        )
    ids, handles, locations = [], [], []
    for number, path in enumerate(sorted(folder.glob("shard-*.safetensors"))[:shards]):
        try:  # memory-mapped: a slice reads only the rows asked for
            handle = safe_open(str(path), framework="pt")
            offsets = handle.get_tensor("offsets")
            shape = handle.get_slice("states").get_shape()
        except Exception as error:  # safetensors raises its own error types for a damaged file
            raise NativeRetrieverError(
                f"Hidden-state shard {path} is damaged ({error}); delete it and rerun (the other shards are kept)."
            ) from error
        if shape[1:] != [manifest.get("hidden_size")] or int(offsets[-1]) != shape[0]:
            raise NativeRetrieverError(
                f"Hidden-state shard {path} holds states of shape {shape}, not what {folder}/manifest.json "
                "describes; delete the shard and rerun."
            )
        ids += json.loads(path.with_suffix(".json").read_text())
        handles.append(handle)
        column = torch.full((len(offsets) - 1,), number, dtype=torch.long)
        locations.append(torch.stack([column, offsets[:-1], offsets[1:]], dim=1))
    empty = torch.zeros((0, 3), dtype=torch.long)
    return HiddenStateCache(ids, manifest, handles, torch.cat(locations) if locations else empty)


def teacher_vectors(
    teacher: Teacher,
    data: RetrievalData,
    root: str | os.PathLike,
    target: str = "history",
    ranks: Ranks | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher vectors of the corpus and of each query's alignment target, cached as .npy files.

    ``target``: ``history`` (the whole conversation, cut from the oldest turns to the teacher's window),
    ``history-N`` (the last N messages) or ``question`` (the current question alone). Under several processes
    rank 0 encodes, the others wait and read its files.
    """
    ranks = ranks or Ranks()
    if not ranks.main:
        ranks.barrier()  # rank 0 encodes first (its barrier below)
        return _teacher_vectors(teacher, data, root, target)
    vectors = _teacher_vectors(teacher, data, root, target)
    ranks.barrier()
    return vectors


def _teacher_vectors(
    teacher: Teacher, data: RetrievalData, root: str | os.PathLike, target: str
) -> tuple[np.ndarray, np.ndarray]:
    texts = [d["text"] for d in data.corpus]
    spec = encoding_spec(teacher) | {"corpus": texts_digest(texts), "queries": queries_digest(data.queries)}
    folder = Path(root) / f"teacher-{_key(spec)}"
    folder.mkdir(parents=True, exist_ok=True)
    corpus_path, target_path = folder / "corpus.npy", folder / f"target-{target}.npy"
    if not corpus_path.is_file():
        _save_npy(corpus_path, teacher.encode(texts, show_progress=True))
    if not target_path.is_file():
        texts = [target_text(teacher, q, target) for q in data.queries]
        _save_npy(target_path, teacher.encode(texts, show_progress=True))
    return np.load(corpus_path), np.load(target_path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:  # np.save(tmp) would add a second .npy suffix
        np.save(handle, array)


def target_text(teacher: Teacher, query: dict, target: str) -> str:
    """The text whose teacher vector a head is aligned to (see ``teacher_vectors``)."""
    if target == "question":
        return query["question"]
    if target == "history":
        return teacher.history_query(query["messages"])
    if target.startswith("history-") and target[8:].isdigit():
        return teacher.history_query(query["messages"], last=int(target[8:]))
    raise ValueError(f"Unknown alignment target {target!r}; use question, history or history-N.")
