"""Tests for native_retriever.data: every malformed line of a data folder is refused with the file, the line and the
fix (pure Python, fast)."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import append_line

from native_retriever.data import load_data
from native_retriever.errors import DataFormatError, InvalidArgumentError


@pytest.mark.parametrize("line, kind", [(b"[1, 2]", "an array"), (b'"text"', "a string"), (b"null", "null")])
def test_a_line_that_is_not_a_json_object_is_refused_with_its_line(data_copy, line, kind):
    number = append_line(data_copy / "corpus.jsonl", line)
    with pytest.raises(DataFormatError, match="not a JSON object") as info:
        load_data(data_copy)
    assert f"{data_copy / 'corpus.jsonl'}:{number} is {kind}" in str(info.value)


def test_a_line_that_is_not_utf8_is_refused_with_its_line(data_copy):
    number = append_line(data_copy / "queries.jsonl", b'{"id": "caf\xe9", "messages": []}')
    with pytest.raises(DataFormatError, match="not valid UTF-8") as info:
        load_data(data_copy)
    assert f"{data_copy / 'queries.jsonl'}:{number}" in str(info.value) and "save the file as UTF-8" in str(info.value)


def test_a_qrels_file_that_is_not_utf8_is_refused_with_its_line(data_copy):
    number = append_line(data_copy / "qrels.tsv", b"q\xe9 0 d1 1")
    with pytest.raises(DataFormatError, match="not valid UTF-8") as info:
        load_data(data_copy)
    assert f"{data_copy / 'qrels.tsv'}:{number}" in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_gzip_is_refused_naming_the_file(data_copy, damage):
    packed = gzip.compress((data_copy / "corpus.jsonl").read_bytes())
    (data_copy / "corpus.jsonl").unlink()
    path = data_copy / "corpus.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2] if damage == "truncated" else packed[:20] + b"\x00" * 200)
    with pytest.raises(DataFormatError, match="not a readable gzip file") as info:
        load_data(data_copy)
    assert str(path) in str(info.value) and "gzip -t" in str(info.value)


def test_a_folder_without_judged_queries_is_refused_when_judgements_are_required(data_copy):
    (data_copy / "qrels.tsv").write_text("nobody 0 d1 1\n")
    assert load_data(data_copy).queries == []  # training can do with passage queries
    with pytest.raises(DataFormatError, match="no judged queries") as info:
        load_data(data_copy, require_judged=True)
    assert str(data_copy / "qrels.tsv") in str(info.value) and str(data_copy / "queries.jsonl") in str(info.value)
    (data_copy / "qrels.tsv").unlink()
    with pytest.raises(DataFormatError, match="qrels.tsv does not exist"):
        load_data(data_copy, require_judged=True)


def test_qrels_naming_a_passage_missing_from_the_corpus_are_refused_with_the_line(data_copy):
    qid = load_data(data_copy).queries[-1]["id"]
    number = append_line(data_copy / "qrels.tsv", f"{qid}\t0\tno-such-doc\t1".encode())
    with pytest.raises(DataFormatError, match="'no-such-doc', which is not in") as info:
        load_data(data_copy)
    assert f"{data_copy / 'qrels.tsv'}:{number}" in str(info.value) and "remove the line" in str(info.value)
    assert load_data(data_copy, max_queries=1).queries  # only the judgements of the queries kept count


@pytest.mark.parametrize("max_queries", [0, -1])
def test_max_queries_below_one_is_refused(data_copy, max_queries):
    with pytest.raises(InvalidArgumentError, match="max_queries must be a positive number"):
        load_data(data_copy, max_queries=max_queries)
    assert len(load_data(data_copy, max_queries=1).queries) == 1


@pytest.mark.parametrize("file, row", [("corpus.jsonl", {"id": "d 99", "text": "A passage."}), ("queries.jsonl", None)])
def test_ids_with_whitespace_are_refused_with_the_line(data_copy, file, row):
    if row is None:  # a judged query whose id holds a tab
        row = {"id": "q\t99", "messages": [{"role": "user", "content": "Where?"}]}
    number = append_line(data_copy / file, json.dumps(row).encode())
    with pytest.raises(DataFormatError, match="contains whitespace") as info:
        load_data(data_copy)
    assert f"{data_copy / file}:{number}" in str(info.value) and "TREC" in str(info.value)


def test_evaluate_systems_refuses_data_without_queries(data_copy):
    from native_retriever.evaluation import evaluate_systems

    (data_copy / "qrels.tsv").write_text("")
    with pytest.raises(DataFormatError, match="no judged queries"):
        evaluate_systems(load_data(data_copy), ["bm25-question"])
