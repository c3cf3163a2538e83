"""Cache LLM hidden states and teacher vectors once, so head epochs cost only the head.

A hidden-state cache is a folder of shards (``shard-00000.safetensors`` + ``.json``), each holding the token
states of a few hundred conversations rendered by the shared formatter with the question appended as the agent's
search query (so one pass serves both ``context`` and ``query`` heads: a causal LM's prefix states do not depend
on what follows). Finished shards are kept, so an interrupted run resumes where it stopped.

Every cache folder is named by a digest of what it was computed from, never by the data folder's name: the
queries' content, the layers, the prompt format (window included) and the tokenizer for hidden states; the
corpus, the queries, the teacher's identity, window and normalisation for teacher vectors. Edited data, or another
folder of the same name, gets a folder of its own; the same data under another name reuses the cache. A folder
cached from another LLM's weights under the same name is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..conversation import EncodedConversation, PromptFormat, encode_conversation
from ..data import RetrievalData
from ..errors import NativeRetrieverError
from ..files import atomic_file
from ..models import fingerprints_match, llm_info
from ..states import token_states
from ..teacher import Teacher, encoding_spec, texts_digest
from .distributed import Ranks


@dataclass
class HiddenStateCache:
    """Token states of many conversations, concatenated: example i is ``states[offsets[i]:offsets[i+1]]``."""

    ids: list[str]
    states: torch.Tensor  # (total tokens, H), float16
    offsets: torch.Tensor  # (n + 1,)
    last_user: torch.Tensor  # (n, 2) token spans
    query: torch.Tensor  # (n, 2) token spans of the appended question

    def encoded(self, i: int) -> EncodedConversation:
        """Spans of example i in the form the embedder's token selection reads."""
        length = int(self.offsets[i + 1] - self.offsets[i])
        return EncodedConversation([0] * length, tuple(self.last_user[i].tolist()), tuple(self.query[i].tolist()), 0)

    def example(self, i: int) -> torch.Tensor:
        """The cached hidden states (T, H) of example `i`."""
        return self.states[self.offsets[i] : self.offsets[i + 1]]

    def select(self, rows: list[int]) -> HiddenStateCache:
        """A new cache holding examples ``rows`` (in that order)."""
        lengths = torch.tensor([0] + [int(self.offsets[i + 1] - self.offsets[i]) for i in rows])
        states = torch.cat([self.example(i) for i in rows]) if rows else self.states[:0]
        return HiddenStateCache(
            [self.ids[i] for i in rows], states, lengths.cumsum(0), self.last_user[rows], self.query[rows]
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


def cache_hidden_states(
    model,
    tokenizer,
    data: RetrievalData,
    root: str | os.PathLike,
    *,
    layers: list[int] | None = None,
    prompt_format: PromptFormat | None = None,
    batch_size: int = 4,
    shard_size: int = 256,
    ranks: Ranks | None = None,
) -> HiddenStateCache:
    """Compute (or resume) the hidden-state cache of ``data``'s queries and load it.

    Under several processes (``ranks``, :mod:`native_retriever.training.distributed`) shard ``n`` is computed by
    rank ``n % world``; all ranks wait for each other, then load every shard. Shard boundaries depend only on
    ``shard_size``, so a cache started with one number of processes is resumed and used by any other, and equals
    the one-process cache.
    """
    ranks = ranks or Ranks()
    layers = layers or [-1]
    fmt = prompt_format or PromptFormat()
    info = llm_info(model)
    spec = {
        "llm": info["name"],
        "layers": layers,
        "prompt_format": fmt.to_dict(),
        "tokenizer": tokenizer_digest(tokenizer),
        "queries": queries_digest(data.queries),
    }
    folder = Path(root) / f"states-{_key(spec)}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        if not fingerprints_match(previous["llm"]["fingerprint"], info["fingerprint"]):
            raise NativeRetrieverError(
                f"{folder} was cached from another LLM's weights; delete it or use another cache."
            )
    else:
        with atomic_file(manifest) as tmp:  # the data's name is recorded for people, never part of the key
            tmp.write_text(json.dumps({**spec, "llm": info, "data": data.name}, indent=2))
    shards = range(0, len(data.queries), shard_size)
    mine = [(n, start) for n, start in enumerate(shards) if n % ranks.world == ranks.rank]
    total = sum(len(data.queries[start : start + shard_size]) for _, start in mine)
    with tqdm(total=total, desc=f"Caching hidden states ({data.name})", unit="conv", disable=not total) as bar:
        for number, start in mine:
            path = folder / f"shard-{number:05d}.safetensors"
            chunk = data.queries[start : start + shard_size]
            if not _shard_done(path, chunk):
                _write_shard(model, tokenizer, chunk, fmt, layers, batch_size, path, bar)
            else:
                bar.update(len(chunk))
    ranks.barrier()  # every rank's shards are written
    for number, start in enumerate(shards):
        if not _shard_done(folder / f"shard-{number:05d}.safetensors", data.queries[start : start + shard_size]):
            raise NativeRetrieverError(
                f"Shard {number} of {folder} is missing or holds other conversations after every process finished; "
                "run the command again (finished shards are kept)."
            )
    return load_hidden_states(folder, shards=len(shards))


def _shard_done(path: Path, chunk: list[dict]) -> bool:
    ids_path = path.with_suffix(".json")
    return path.is_file() and ids_path.is_file() and json.loads(ids_path.read_text()) == [q["id"] for q in chunk]


def _write_shard(model, tokenizer, queries, fmt, layers, batch_size, path: Path, bar) -> None:
    encoded = [encode_conversation(tokenizer, q["messages"], fmt, query=q["question"]) for q in queries]
    states: list[torch.Tensor] = [None] * len(encoded)  # type: ignore[list-item]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        for row, state in zip(rows, token_states(model, [encoded[i].input_ids for i in rows], layers)):
            states[row] = state.to("cpu", torch.float16)
        bar.update(len(rows))
    lengths = torch.tensor([0] + [s.shape[0] for s in states])
    tensors = {
        "states": torch.cat(states),
        "offsets": torch.cumsum(lengths, 0),
        "last_user": torch.tensor([e.last_user for e in encoded]),
        "query": torch.tensor([e.query for e in encoded]),
    }
    # the ids first, so that a shard on disk always has its ids beside it (each file replaced atomically)
    with atomic_file(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps([q["id"] for q in queries]))
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp))


def load_hidden_states(folder: str | os.PathLike, shards: int | None = None) -> HiddenStateCache:
    """Load the first ``shards`` shards (default: all) of a cache folder into one HiddenStateCache."""
    shards = sorted(Path(folder).glob("shard-*.safetensors"))[:shards]
    ids, states, offsets, last_user, query, base = [], [], [torch.zeros(1, dtype=torch.long)], [], [], 0
    for path in shards:
        shard = load_file(str(path))
        ids += json.loads(path.with_suffix(".json").read_text())
        states.append(shard["states"])
        offsets.append(shard["offsets"][1:] + base)
        base += int(shard["offsets"][-1])
        last_user.append(shard["last_user"])
        query.append(shard["query"])
    return HiddenStateCache(ids, torch.cat(states), torch.cat(offsets), torch.cat(last_user), torch.cat(query))


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
