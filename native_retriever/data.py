"""Retrieval data in the format users bring (docs/data-format.md): corpus, conversations, qrels."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .conversation import validate_conversation
from .errors import ConversationError, DataFormatError, InvalidArgumentError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """The JSON objects of a ``.jsonl`` or ``.jsonl.gz`` file with their line numbers; a line that is not UTF-8 or
    not one JSON object, and a file that cannot be read (a corrupt gzip), raise DataFormatError naming the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                line = _decode(path, number, raw)
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(f"{path}:{number} is not valid JSON ({exc.msg}).") from exc
                if not isinstance(value, dict):
                    kind = "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)
                    raise DataFormatError(
                        f"{path}:{number} is {kind}, not a JSON object; each line must be one object such as "
                        '{"id": ..., ...} (see docs/data-format.md).'
                    )
                yield number, value
    except (OSError, EOFError, zlib.error) as exc:
        if path.suffix == ".gz":
            raise DataFormatError(
                f"{path} is not a readable gzip file (after line {number}: {exc}); recompress it (`gzip -t` checks "
                "it) or replace it by the uncompressed .jsonl."
            ) from exc
        raise DataFormatError(f"{path} cannot be read ({exc}); check that it is a readable file.") from exc


def _decode(path: Path, number: int, raw: bytes) -> str:
    """One line of a data file as text; a line that is not UTF-8 raises DataFormatError naming it."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path}:{number} is not valid UTF-8 ({exc.reason} at byte {exc.start} of the line); save the file as "
            "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from exc


def _qrels_lines(path: Path) -> Iterator[tuple[int, str, str, int]]:
    """``(line number, qid, docid, relevance)`` of each judgement in a TREC qrels file."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DataFormatError(f"{path} cannot be read ({exc}); check that it is a readable file.") from exc
    for number, raw in enumerate(lines, 1):
        line = _decode(path, number, raw)
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
            raise DataFormatError(f"{path}:{number}: expected 'qid 0 docid relevance', got {line!r}.")
        yield number, parts[0], parts[2], int(parts[3])


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels: ``qid 0 docid relevance`` separated by tabs or spaces."""
    qrels: dict[str, dict[str, int]] = {}
    for _, qid, docid, relevance in _qrels_lines(path):
        if relevance > 0:
            qrels.setdefault(qid, {})[docid] = relevance
    return qrels


def _check_id(value: str, path: Path, number: int, what: str) -> str:
    """An id that TREC run and qrels files can hold (non-empty, no whitespace), else DataFormatError."""
    if not value or any(c.isspace() for c in value):
        problem = "is empty" if not value else "contains whitespace"
        raise DataFormatError(
            f"{path}:{number}: {what} id {value!r} {problem}; TREC runs and qrels.tsv separate their fields by "
            "whitespace, so give it an id without spaces (e.g. replace them by '_'), here and in qrels.tsv."
        )
    return value


def _read_corpus(path: Path) -> list[dict]:
    corpus, seen = [], set()
    for number, doc in _read_jsonl(path):
        text = doc.get("text")
        if "id" not in doc or not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{path}:{number}: every passage needs an 'id' and non-empty 'text'.")
        doc["id"] = _check_id(str(doc["id"]), path, number, "passage")
        if doc["id"] in seen:
            raise DataFormatError(f"{path}:{number}: passage id {doc['id']!r} appears twice.")
        seen.add(doc["id"])
        corpus.append(doc)
    if not corpus:
        raise DataFormatError(f"{path} holds no passages; a corpus needs at least one.")
    return corpus


def load_corpus(source: str | os.PathLike) -> list[dict]:
    """The passages of a data folder's ``corpus.jsonl(.gz)`` (queries not needed), or of a folder of text and
    Markdown files cut as ``native-retriever index`` cuts them (``documents.load_folder``): ``{"id", "text",
    "title"?}`` records. An empty folder, or one with no readable text, raises DataFormatError."""
    from .documents import load_folder

    folder = Path(source)
    if any((folder / name).is_file() for name in ("corpus.jsonl.gz", "corpus.jsonl")):
        return _read_corpus(_open(folder, "corpus"))
    return [{"id": d["id"], "text": d["text"], "title": d["metadata"]["title"]} for d in load_folder(folder)]


def load_data(
    folder: str | os.PathLike, max_queries: int | None = None, *, require_judged: bool = False
) -> RetrievalData:
    """Read a data folder; keeps judged queries in file order (the first ``max_queries`` of them).

    Every line is checked (one JSON object, UTF-8, ids without whitespace, a qrels judgement of a kept query naming
    a passage of the corpus); a problem raises DataFormatError with the file, the line and the fix.
    ``require_judged``: refuse a folder with no judged query (evaluation needs one; training can do with passage
    queries). ``max_queries`` below 1 raises InvalidArgumentError.
    """
    if max_queries is not None and (isinstance(max_queries, bool) or max_queries < 1):
        raise InvalidArgumentError(f"max_queries must be a positive number (or None for all), got {max_queries!r}.")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"Data folder {folder} does not exist; see docs/data-format.md for the layout.")
    path = _open(folder, "corpus")
    corpus = _read_corpus(path)
    seen = {doc["id"] for doc in corpus}
    corpus_path, qrels_path = path, folder / "qrels.tsv"
    qrels = read_qrels(qrels_path) if qrels_path.is_file() else {}
    queries = []
    path = _open(folder, "queries")
    for number, query in _read_jsonl(path):
        query["id"] = str(query.get("id", ""))
        if not query["id"] or "messages" not in query:
            raise DataFormatError(f"{path}:{number}: every query needs an 'id' and 'messages'.")
        _check_id(query["id"], path, number, "query")
        try:
            query["messages"] = validate_conversation(query["messages"])
        except ConversationError as exc:
            raise DataFormatError(f"{path}:{number}: {exc}") from exc
        query.setdefault("question", query["messages"][-1]["content"])
        if query["id"] in qrels:
            queries.append(query)
            if max_queries is not None and len(queries) >= max_queries:
                break
    kept = {q["id"] for q in queries}
    if any(doc not in seen for qid in kept for doc in qrels[qid]):  # a passage no system can find: recall lies
        number, qid, doc = next((n, q, d) for n, q, d, r in _qrels_lines(qrels_path) if q in kept and d not in seen)
        raise DataFormatError(
            f"{qrels_path}:{number}: query {qid!r} is judged relevant to passage {doc!r}, which is not in "
            f"{corpus_path}; fix the id or remove the line."
        )
    if require_judged and not queries:
        why = f"{qrels_path} does not exist" if not qrels_path.is_file() else f"{qrels_path} judges none of them"
        raise DataFormatError(
            f"{folder} has no judged queries (no query of {path} has a relevant passage: {why}); add lines "
            "'qid 0 docid relevance' with the query ids of that file to qrels.tsv (see docs/data-format.md)."
        )
    return RetrievalData(folder.name, corpus, queries, {q["id"]: qrels[q["id"]] for q in queries})


def passage_queries(
    data: RetrievalData,
    tokenizer: PreTrainedTokenizerBase,
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
