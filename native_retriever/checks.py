"""Checks that run before any work starts: output paths that can be written (and, for a package save, may be
replaced), lists of texts that are lists, counts that are counts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .errors import InputTypeError, InvalidArgumentError
from .files import check_output_folder


def check_output_path(
    path: str | os.PathLike,
    what: str,
    *,
    kind: Literal["file", "folder"],
    replaced: bool = False,
    saves: str | None = None,
) -> Path:
    """Refuse, before any model loads, an output path that the command could not write at its end.

    ``kind="file"``: ``path`` will be a file (an existing one is overwritten), so it must not be a folder.
    ``kind="folder"``: ``path`` will be a folder written into, so it must not be an existing file; with
    ``replaced=True`` the folder is written beside itself and renamed into place, so its parent must be writable too.
    ``saves``: the folder will be replaced by a package save of that kind (``"head"``, ``"index"``, ...; implies
    ``kind="folder", replaced=True``), so an existing folder must be one the package wrote
    (:func:`native_retriever.files.check_output_folder`, which raises the kind's error).
    Missing parent folders are fine (they are created) as long as the nearest existing one is a writable folder.
    ``what`` names the option in the message (``"--output"``). Returns ``path`` as a Path; raises
    InvalidArgumentError (for ``saves``, a folder the package did not write: the kind's error) naming the path and
    the fix.
    """
    target = Path(path)
    if str(path) == "":
        raise InvalidArgumentError(f"{what} is empty; pass a path to write.")
    if saves is not None:
        if kind != "folder":
            raise ValueError("saves= names a kind of folder; pass kind='folder'")
        replaced = True
    if target.exists():
        if kind == "file" and target.is_dir():
            raise InvalidArgumentError(f"{what} {target} is a folder; pass the path of a file to write.")
        if kind == "folder" and not target.is_dir():
            raise InvalidArgumentError(
                f"{what} {target} is an existing file, not a folder; remove it or pass another folder path."
            )
        if not os.access(target, os.W_OK):
            raise InvalidArgumentError(f"{what} {target} is not writable; change its permissions or pass another path.")
        if not (kind == "folder" and replaced):
            return target
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InvalidArgumentError(
            f"{what} {target} cannot be created: {ancestor} is a file, not a folder; pass a path under a folder."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InvalidArgumentError(
            f"{what} {target} cannot be written: the folder {ancestor} is not writable; pass a path you can write to."
        )
    if saves is not None:
        check_output_folder(target, saves)  # an existing folder must be one the package wrote
    return target


def text_list(texts: Sequence[str], what: str) -> list[str]:
    """``texts`` as a list, refusing a bare string (which would be embedded one character at a time).

    ``what`` names the call in the message (``"embed_documents"``); raises InputTypeError.
    """
    if isinstance(texts, str | bytes):
        raise InputTypeError(
            f"{what} takes a list of texts, got a bare {type(texts).__name__} ({texts[:40]!r}); "
            f"wrap a single text in a list: {what}([text])."
        )
    return list(texts)


def check_count(value: object, name: str, lowest: int = 1) -> int:
    """``value`` when it is an integer (not a bool) of at least ``lowest``; otherwise InvalidArgumentError (a
    ValueError) naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise InvalidArgumentError(f"{name} must be an integer >= {lowest}, got {value!r}")
    return value
