"""Tests for native_retriever.data: every malformed line of a data folder is refused with the file, the line and the
fix (pure Python, fast)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from native_retriever.data import load_data
from native_retriever.errors import DataFormatError, InvalidArgumentError


@pytest.fixture
def data(tiny_data_folder, tmp_path) -> Path:
    """A writable copy of the tiny data folder."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_data_folder, folder)
    return folder


def _append(path: Path, raw: bytes) -> int:
    """Append one line; returns its line number."""
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([*lines, raw]) + b"\n")
    return len(lines) + 1


@pytest.mark.parametrize("line, kind", [(b"[1, 2]", "an array"), (b'"text"', "a string"), (b"null", "null")])
def test_a_line_that_is_not_a_json_object_is_refused_with_its_line(data, line, kind):
    number = _append(data / "corpus.jsonl", line)
    with pytest.raises(DataFormatError, match="not a JSON object") as info:
        load_data(data)
    assert f"{data / 'corpus.jsonl'}:{number} is {kind}" in str(info.value)


def test_a_line_that_is_not_utf8_is_refused_with_its_line(data):
    number = _append(data / "queries.jsonl", b'{"id": "caf\xe9", "messages": []}')
    with pytest.raises(DataFormatError, match="not valid UTF-8") as info:
        load_data(data)
    assert f"{data / 'queries.jsonl'}:{number}" in str(info.value) and "save the file as UTF-8" in str(info.value)


def test_a_qrels_file_that_is_not_utf8_is_refused_with_its_line(data):
    number = _append(data / "qrels.tsv", b"q\xe9 0 d1 1")
    with pytest.raises(DataFormatError, match="not valid UTF-8") as info:
        load_data(data)
    assert f"{data / 'qrels.tsv'}:{number}" in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_gzip_is_refused_naming_the_file(data, damage):
    packed = gzip.compress((data / "corpus.jsonl").read_bytes())
    (data / "corpus.jsonl").unlink()
    path = data / "corpus.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2] if damage == "truncated" else packed[:20] + b"\x00" * 200)
    with pytest.raises(DataFormatError, match="not a readable gzip file") as info:
        load_data(data)
    assert str(path) in str(info.value) and "gzip -t" in str(info.value)


def test_a_folder_without_judged_queries_is_refused_when_judgements_are_required(data):
    (data / "qrels.tsv").write_text("nobody 0 d1 1\n")
    assert load_data(data).queries == []  # training can do with passage queries
    with pytest.raises(DataFormatError, match="no judged queries") as info:
        load_data(data, require_judged=True)
    assert str(data / "qrels.tsv") in str(info.value) and str(data / "queries.jsonl") in str(info.value)
    (data / "qrels.tsv").unlink()
    with pytest.raises(DataFormatError, match="qrels.tsv does not exist"):
        load_data(data, require_judged=True)


def test_qrels_naming_a_passage_missing_from_the_corpus_are_refused_with_the_line(data):
    qid = load_data(data).queries[-1]["id"]
    number = _append(data / "qrels.tsv", f"{qid}\t0\tno-such-doc\t1".encode())
    with pytest.raises(DataFormatError, match="'no-such-doc', which is not in") as info:
        load_data(data)
    assert f"{data / 'qrels.tsv'}:{number}" in str(info.value) and "remove the line" in str(info.value)
    assert load_data(data, max_queries=1).queries  # only the judgements of the queries kept count


@pytest.mark.parametrize("max_queries", [0, -1])
def test_max_queries_below_one_is_refused(data, max_queries):
    with pytest.raises(InvalidArgumentError, match="max_queries must be a positive number"):
        load_data(data, max_queries=max_queries)
    assert len(load_data(data, max_queries=1).queries) == 1


@pytest.mark.parametrize("file, row", [("corpus.jsonl", {"id": "d 99", "text": "A passage."}), ("queries.jsonl", None)])
def test_ids_with_whitespace_are_refused_with_the_line(data, file, row):
    if row is None:  # a judged query whose id holds a tab
        row = {"id": "q\t99", "messages": [{"role": "user", "content": "Where?"}]}
    number = _append(data / file, json.dumps(row).encode())
    with pytest.raises(DataFormatError, match="contains whitespace") as info:
        load_data(data)
    assert f"{data / file}:{number}" in str(info.value) and "TREC" in str(info.value)


def test_evaluate_systems_refuses_data_without_queries(data):
    from native_retriever.evaluation import evaluate_systems

    (data / "qrels.tsv").write_text("")
    with pytest.raises(DataFormatError, match="no judged queries"):
        evaluate_systems(load_data(data), ["bm25-question"])
