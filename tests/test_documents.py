"""Tests for native_retriever.documents and the shipped demo corpus (pure Python, fast)."""

from __future__ import annotations

import json
import warnings
from importlib.resources import files
from pathlib import Path

import pytest

from native_retriever.documents import load_folder
from native_retriever.errors import DataFormatError


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _sentence(i: int, words: int = 10) -> str:
    return " ".join(f"w{i}_{k}" for k in range(words - 1)) + f" end{i}."


def _words(passage: dict) -> int:
    return len(passage["text"].split())


def test_plain_text_paragraphs_are_packed_within_max_words(tmp_path):
    paragraphs = [" ".join(_sentence(p * 10 + s) for s in range(2)) for p in range(10)]  # 10 paragraphs x 20 words
    _write(tmp_path / "notes.txt", "\n\n".join(paragraphs) + "\n")
    passages = load_folder(tmp_path, max_words=50)
    assert [_words(p) for p in passages] == [40, 40, 40, 40, 40]
    assert passages[0]["text"] == paragraphs[0] + "\n\n" + paragraphs[1]
    assert all(p["metadata"]["title"] == "notes" for p in passages)  # no heading: file stem
    # Nothing lost or reordered.
    assert " ".join(p["text"] for p in passages).split() == " ".join(paragraphs).split()


def test_long_paragraph_splits_at_sentences_and_long_sentence_by_words(tmp_path):
    sentences = [_sentence(i, 12) for i in range(8)]  # one 96-word paragraph
    giant = " ".join(f"g{k}" for k in range(75)) + "."  # one 75-word sentence
    _write(tmp_path / "long.txt", " ".join(sentences) + "\n\n" + giant)
    passages = load_folder(tmp_path, max_words=30)
    assert all(_words(p) <= 30 for p in passages)
    # Sentence pieces end at sentence boundaries: two 12-word sentences per chunk.
    assert passages[0]["text"] == f"{sentences[0]} {sentences[1]}"
    assert passages[3]["text"] == f"{sentences[6]} {sentences[7]}"
    assert [_words(p) for p in passages[4:]] == [30, 30, 15]
    assert " ".join(p["text"] for p in passages).split() == (" ".join(sentences) + " " + giant).split()


def test_markdown_headings_become_titles_and_start_chunks(tmp_path):
    text = (
        "Intro line before any heading.\n\n"
        "# Guide\n\nWelcome text.\n\n"
        "## Install ##\n\nRun the installer.\nThen restart.\n\n"
        "```bash\n# not a heading\necho hi\n```\n\n"
        "### Usage\n\nCall it.\n"
    )
    _write(tmp_path / "guide.md", text)
    passages = load_folder(tmp_path)
    titles = [p["metadata"]["title"] for p in passages]
    assert titles == ["Guide", "Guide", "Install", "Usage"]  # preamble takes the file's first heading
    assert passages[0]["text"] == "Intro line before any heading."
    assert passages[2]["text"] == "Run the installer.\nThen restart.\n\n```bash\n# not a heading\necho hi\n```"
    assert all(not p["text"].startswith("#") for p in passages)
    assert [p["metadata"]["chunk"] for p in passages] == [0, 1, 2, 3]


def test_ids_are_stable_unique_and_follow_sorted_relative_paths(tmp_path):
    _write(tmp_path / "b.txt", "Second file.")
    _write(tmp_path / "a.md", "# A\n\nFirst.\n\n# A2\n\nMore.")
    _write(tmp_path / "sub" / "deeper" / "c.rst", "Nested file.")
    _write(tmp_path / "sub" / "ignored.py", "print('not text')")
    first = load_folder(tmp_path)
    assert [p["id"] for p in first] == ["a.md#0", "a.md#1", "b.txt#0", "sub/deeper/c.rst#0"]
    assert first[-1]["metadata"] == {"source": "sub/deeper/c.rst", "title": "c", "chunk": 0}
    assert load_folder(str(tmp_path)) == first
    assert len({p["id"] for p in first}) == len(first)


def test_extensions_filter(tmp_path):
    _write(tmp_path / "a.md", "Markdown.")
    _write(tmp_path / "b.txt", "Text.")
    assert [p["id"] for p in load_folder(tmp_path, extensions=("md",))] == ["a.md#0"]


def test_hidden_files_and_folders_are_skipped(tmp_path):
    _write(tmp_path / "visible.txt", "Seen.")
    _write(tmp_path / ".hidden.txt", "Not seen.")
    _write(tmp_path / ".git" / "notes.md", "Not seen either.")
    _write(tmp_path / "sub" / ".cache" / "x.txt", "Nor this.")
    assert [p["id"] for p in load_folder(tmp_path)] == ["visible.txt#0"]


def test_non_utf8_file_warns_and_is_skipped(tmp_path):
    _write(tmp_path / "good.txt", "Fine text.")
    _write(tmp_path / "bad.txt", b"caf\xe9 latin-1 text")
    with pytest.warns(UserWarning, match=r"bad\.txt.*UTF-8"):
        passages = load_folder(tmp_path)
    assert [p["id"] for p in passages] == ["good.txt#0"]


def test_empty_files_produce_nothing(tmp_path):
    _write(tmp_path / "empty.txt", "")
    _write(tmp_path / "blank.md", "  \n\n\t\n")
    _write(tmp_path / "real.txt", "Content.")
    assert [p["id"] for p in load_folder(tmp_path)] == ["real.txt#0"]


def test_missing_folder_error_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataFormatError, match="pass a folder of .txt or .md files") as info:
        load_folder(missing)
    assert str(missing) in str(info.value)


def test_folder_without_passages_error_lists_extensions(tmp_path):
    _write(tmp_path / "code.py", "x = 1")
    _write(tmp_path / "empty.md", "\n")
    with pytest.raises(DataFormatError, match="no passages were found") as info:
        load_folder(tmp_path)
    assert ".txt" in str(info.value) and ".md" in str(info.value)


def test_only_undecodable_files_error_mentions_skipped(tmp_path):
    _write(tmp_path / "bad.txt", b"\xff\xfe\x00broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataFormatError, match="unreadable"):
            load_folder(tmp_path)


def test_max_words_too_small(tmp_path):
    _write(tmp_path / "a.txt", "Text.")
    with pytest.raises(ValueError, match="max_words"):
        load_folder(tmp_path, max_words=19)


def test_shipped_demo_corpus_and_conversation():
    data = files("native_retriever") / "resources"
    lines = (data / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines()
    corpus = [json.loads(line) for line in lines]
    assert len(corpus) == 24
    assert all(set(doc) == {"id", "title", "text"} for doc in corpus)
    assert len({doc["id"] for doc in corpus}) == len(corpus)
    assert len({doc["title"] for doc in corpus}) == len(corpus)
    for doc in corpus:
        assert doc["text"].strip() and 60 <= len(doc["text"].split()) <= 120, doc["id"]

    conversation = json.loads((data / "demo_conversation.json").read_text(encoding="utf-8"))
    turns, expected = conversation["turns"], conversation["expected_topic_titles"]
    assert len(turns) == len(expected) == 4
    assert all(isinstance(turn, str) and turn.strip() for turn in turns)
    titles = {doc["title"] for doc in corpus}
    assert all(title in titles for title in expected)


def test_max_words_too_small_is_the_packages_argument_error(tmp_path):
    from native_retriever.errors import InvalidArgumentError

    _write(tmp_path / "a.txt", "Text.")
    with pytest.raises(InvalidArgumentError, match="max_words must be at least 20"):
        load_folder(tmp_path, max_words=5)


def test_a_fifo_is_skipped_with_a_warning_instead_of_hanging(tmp_path):
    import os
    import signal

    _write(tmp_path / "good.txt", "Fine text.")
    os.mkfifo(tmp_path / "pipe.txt")

    def hung(*_):
        raise TimeoutError("load_folder blocked reading the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.warns(UserWarning, match=r"skipping pipe\.txt: it is not a regular file"):
            passages = load_folder(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [p["id"] for p in passages] == ["good.txt#0"]


def test_links_out_of_the_folder_are_not_followed(tmp_path):
    outside = _write(tmp_path / "secret" / "passwords.txt", "Not for the index.")
    _write(tmp_path / "docs" / "good.txt", "Fine text.")
    (tmp_path / "docs" / "leak.txt").symlink_to(outside)
    (tmp_path / "docs" / "inner.txt").symlink_to(tmp_path / "docs" / "good.txt")  # a link inside the folder is read
    (tmp_path / "docs" / "folder").symlink_to(tmp_path / "secret", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"skipping leak\.txt: it is a link to .*passwords\.txt, outside the folder"):
        passages = load_folder(tmp_path / "docs")
    assert [p["id"] for p in passages] == ["good.txt#0", "inner.txt#0"]


def test_a_file_name_that_is_not_utf8_is_skipped_up_front(tmp_path):
    import os

    _write(tmp_path / "good.txt", "Fine text.")
    _write(Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.txt")), "Latin-1 name.")
    with pytest.warns(UserWarning, match=r"caf\\xe9\.txt.*path is not valid UTF-8; rename it"):
        passages = load_folder(tmp_path)
    assert [p["id"] for p in passages] == ["good.txt#0"]
    json.dumps(passages, ensure_ascii=False).encode()  # what the index writes: no surrogates left
