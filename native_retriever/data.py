"""Retrieval data in the format users bring (docs/data-format.md): corpus, conversations, qrels."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .conversation import validate_conversation
from .errors import ConversationError, DataFormatError


@dataclass
class RetrievalData:
    """A corpus, judged conversations and qrels, as read from one data folder."""

    name: str
    corpus: list[dict]  # {"id", "text", "title"?}
    queries: list[dict]  # {"id", "messages", "question", ...}; only queries with qrels
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}

    @property
    def doc_ids(self) -> list[str]:
        """The corpus's document ids, in corpus order."""
        return [doc["id"] for doc in self.corpus]


def _open(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl.gz", f"{stem}.jsonl"):
        if (folder / name).is_file():
            return folder / name
    raise DataFormatError(f"{folder} has no {stem}.jsonl or {stem}.jsonl.gz; see docs/data-format.md.")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{number} is not valid JSON ({exc.msg}).") from exc


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels: ``qid 0 docid relevance`` separated by tabs or spaces."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
            raise DataFormatError(f"{path}:{number}: expected 'qid 0 docid relevance', got {line!r}.")
        if int(parts[3]) > 0:
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


def load_data(folder: str | os.PathLike, max_queries: int | None = None) -> RetrievalData:
    """Read a data folder; keeps judged queries in file order (the first ``max_queries`` of them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"Data folder {folder} does not exist; see docs/data-format.md for the layout.")
    corpus, seen = [], set()
    path = _open(folder, "corpus")
    for number, doc in _read_jsonl(path):
        text = doc.get("text")
        if "id" not in doc or not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{path}:{number}: every passage needs an 'id' and non-empty 'text'.")
        doc["id"] = str(doc["id"])
        if doc["id"] in seen:
            raise DataFormatError(f"{path}:{number}: passage id {doc['id']!r} appears twice.")
        seen.add(doc["id"])
        corpus.append(doc)
    if not corpus:
        raise DataFormatError(f"{path} holds no passages; a corpus needs at least one.")
    qrels = read_qrels(folder / "qrels.tsv") if (folder / "qrels.tsv").is_file() else {}
    queries = []
    path = _open(folder, "queries")
    for number, query in _read_jsonl(path):
        query["id"] = str(query.get("id", ""))
        if not query["id"] or "messages" not in query:
            raise DataFormatError(f"{path}:{number}: every query needs an 'id' and 'messages'.")
        try:
            query["messages"] = validate_conversation(query["messages"])
        except ConversationError as exc:
            raise DataFormatError(f"{path}:{number}: {exc}") from exc
        query.setdefault("question", query["messages"][-1]["content"])
        if query["id"] in qrels:
            queries.append(query)
            if max_queries is not None and len(queries) >= max_queries:
                break
    return RetrievalData(folder.name, corpus, queries, {q["id"]: qrels[q["id"]] for q in queries})


def passage_queries(
    data: RetrievalData,
    tokenizer,
    limit: int | None = None,
    exclude: frozenset[str] = frozenset(),
    max_tokens: int = 256,
) -> RetrievalData:
    """The corpus as training conversations: each of the first ``limit`` passages (less ``exclude``) becomes a
    one-message conversation whose relevant passage is itself.

    Training on these teaches a head the teacher's space on the user's own texts, with or without judged
    conversations (``train-head --passage-queries``). A passage longer than ``max_tokens`` of ``tokenizer`` (the
    LLM's) is cut to them, so it fits the LLM's window and about the teacher's (256 word pieces). ``question`` (the
    stand-in search query a ``query`` head reads) is the first 32 words.
    """
    docs = [doc for doc in data.corpus[:limit] if doc["id"] not in exclude]
    queries = []
    for doc in docs:
        text, ids = doc["text"], tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            text = tokenizer.decode(ids[:max_tokens]).strip()
        queries.append(
            {
                "id": f"passage:{doc['id']}",
                "messages": [{"role": "user", "content": text}],
                "question": " ".join(text.split()[:32]),
                "story_id": f"passage:{doc['id']}",
            }
        )
    qrels = {q["id"]: {doc["id"]: 1} for q, doc in zip(queries, docs)}
    return RetrievalData(f"{data.name}-passages", data.corpus, queries, qrels)
