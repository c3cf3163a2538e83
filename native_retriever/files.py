"""What heads and latent adapters share on disk: atomic folder writes, checked JSON configs, identity checks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import HeadFileError, IncompatibleHeadError
from .models import fingerprints_match


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``folder`` to write into; on success it replaces ``folder``.

    A crash (or an exception in the block) leaves the old folder as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        yield tmp
        backup = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            os.replace(folder, backup)
        os.replace(tmp, folder)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_config(path: Path, fmt: str, what: str) -> dict:
    """A JSON config whose ``format`` field is ``fmt``; anything else raises HeadFileError naming ``path``."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeadFileError(f"{path} is not valid JSON ({exc}); restore or retrain the {what}.") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise HeadFileError(f"{path} is not a native-retriever {what} config (format != {fmt!r}).")
    return data


def check_identity(what: str, side: str, actual: dict, expected: dict, fix: str) -> None:
    """Refuse a model whose identity (sizes, then weight fingerprint) differs from ``expected``, naming the field."""
    for key in sorted(set(actual) & set(expected) - {"name"}, key=lambda name: (name == "fingerprint", name)):
        if key == "fingerprint":
            same, shown = fingerprints_match(actual[key], expected[key]), "values differ"
        else:
            same, shown = actual[key] == expected[key], f"{what}: {expected[key]!r}, given: {actual[key]!r}"
        if not same:
            raise IncompatibleHeadError(
                f"This {what} was trained for {side} {expected.get('name')!r} but got {actual.get('name')!r}: "
                f"{side} field {key!r} differs ({shown}). {fix}"
            )
