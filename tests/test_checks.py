"""Tests for native_retriever.checks and the bare-string guard of every embed_documents (no model loads)."""

from __future__ import annotations

import pytest

from native_retriever.checks import check_output_path, text_list
from native_retriever.errors import HeadFileError, IndexFileError, InputTypeError, InvalidArgumentError


def test_output_paths_that_can_be_written_pass(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "index").mkdir()
    assert check_output_path(tmp_path / "report.json", "--output", kind="file") == tmp_path / "report.json"
    assert check_output_path(tmp_path / "new" / "deeper" / "r.json", "--output", kind="file")
    assert check_output_path(tmp_path / "index", "-o", kind="folder", replaced=True)
    assert check_output_path(tmp_path / "new-index", "-o", kind="folder")


def test_output_paths_that_cannot_be_written_are_refused_naming_them(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("user data")
    cases = [
        (existing, "folder", "is an existing file, not a folder"),
        (tmp_path, "file", "is a folder; pass the path of a file"),
        (existing / "report.json", "file", "is a file, not a folder"),
        (existing / "runs", "folder", "is a file, not a folder"),
        ("", "file", "is empty"),
    ]
    for path, kind, message in cases:
        with pytest.raises(InvalidArgumentError, match=message) as info:
            check_output_path(path, "--output", kind=kind)
        assert str(info.value).startswith(f"--output {path}" if path else "--output is empty")


def test_output_folders_of_package_saves_must_be_folders_the_package_wrote(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    (tmp_path / "notes.txt").write_text("user data")
    new = tmp_path / "new" / "index"
    assert check_output_path(new, "-o", kind="folder", saves="index") == new
    assert check_output_path(tmp_path / "empty", "-o", kind="folder", saves="head") == tmp_path / "empty"
    with pytest.raises(HeadFileError, match=r"did not write \(notes.txt\); refusing to replace it by a head"):
        check_output_path(tmp_path / "mine", "--output", kind="folder", saves="head")
    with pytest.raises(IndexFileError, match=r"refusing to replace it by an index"):
        check_output_path(tmp_path / "mine", "--output", kind="folder", saves="index")
    with pytest.raises(InvalidArgumentError, match="--output .* is an existing file, not a folder"):
        check_output_path(tmp_path / "notes.txt", "--output", kind="folder", saves="head")
    with pytest.raises(ValueError, match="kind='folder'"):
        check_output_path(tmp_path / "x", "--output", kind="file", saves="head")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "user data" and not (tmp_path / "new").exists()


def test_text_list_refuses_a_bare_string():
    assert text_list(("a", "b"), "f") == ["a", "b"]
    for bare in ("a passage", b"bytes"):
        with pytest.raises(InputTypeError, match=r"takes a list of texts.*embed_documents\(\[text\]\)"):
            text_list(bare, "embed_documents")
    assert issubclass(InputTypeError, TypeError)


def test_embed_documents_and_teacher_encode_refuse_a_bare_string():
    """A bare string used to be embedded one vector per character."""
    from native_retriever.embedder import NativeEmbedder
    from native_retriever.latent import LatentEmbedder
    from native_retriever.teacher import Teacher

    class NoModel:
        def encode(self, texts, **kwargs):
            raise AssertionError(f"embedded {list(texts)!r}")

    calls = [
        Teacher(NoModel(), "teacher").encode,
        NativeEmbedder.__new__(NativeEmbedder).embed_documents,  # refused before the teacher is touched
        LatentEmbedder.__new__(LatentEmbedder).embed_documents,
    ]
    for call in calls:
        with pytest.raises(InputTypeError, match="takes a list of texts, got a bare str"):
            call("one passage")
