"""What the package's saves share on disk: one crash-safe folder writer with a manifest, checked JSON configs,
identity checks.

Every folder the package saves (heads, latent adapters and checkpoints, indexes, the converted model cache) goes
through :func:`atomic_folder`: the new version is written into a hidden temp folder beside the target, every file
and folder is fsynced, a manifest (``native-retriever.json``: kind, format version, sha256 of every file) is added,
and the temp folder is swapped with the target in one ``renameat2(RENAME_EXCHANGE)`` (Linux); elsewhere two renames,
with the old copy kept as a hidden backup that :func:`recover` puts back if a crash fell between them. Saves to one
folder are serialised by ``flock`` on the parent folder, and loads (:func:`reading`) take it shared, so they
never read half of two versions. A save replaces only a folder the package wrote
(:func:`check_output_folder`); anything else is refused before work starts.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import FolderFileError, HeadFileError, IncompatibleHeadError, IndexFileError

MANIFEST = "native-retriever.json"
MANIFEST_FORMAT = "native-retriever-folder"
MANIFEST_VERSION = 1
#: The kinds of folder the package saves, and the error each one's problems raise.
KIND_ERRORS: dict[str, type[FolderFileError]] = {
    "head": HeadFileError,
    "latent-adapter": HeadFileError,
    "latent-checkpoint": HeadFileError,
    "index": IndexFileError,
    "converted-model": FolderFileError,
}
_FIXES = {
    "head": "restore the folder or retrain the head (`native-retriever train-head`)",
    "latent-adapter": "restore the folder or retrain the adapter (`native-retriever train-latent`)",
    "latent-checkpoint": "delete the checkpoint folder and train again",
    "index": "rebuild the index (`native-retriever index`) or restore the folder from a backup",
    "converted-model": "delete the folder; it is converted again on the next load",
}
# Folders the previous version wrote (no manifest): (required, optional, (json file, its "format")).
_LEGACY: dict[str, list[tuple[set[str], set[str], tuple[str, str] | None]]] = {
    "head": [({"config.json", "head.safetensors"}, {"training_log.json"}, ("config.json", "native-retriever-head"))],
    "index": [
        ({"index.json", "index.faiss", "records.jsonl"}, set(), ("index.json", "native-retriever-index")),
    ],
    "latent-adapter": [
        (
            {"latent_config.json", "adapter_config.json", "adapter_model.safetensors"},
            {"README.md", "training_log.json", "loss_curve.png"},
            ("latent_config.json", "native-retriever-latent"),
        ),
        ({"checkpoint/"}, {"loss_curve.png"}, None),  # a run in progress (or killed): --resume continues it
    ],
    "latent-checkpoint": [
        (
            {"adapter.safetensors", "optimizer.safetensors", "state.json"},
            {"adapter.safetensors.tmp", "optimizer.safetensors.tmp", "state.json.tmp"},
            None,
        )
    ],
    "converted-model": [],
    "data-folder": [],
}
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp-[A-Za-z0-9_]+|old-[0-9a-f]+|old)$")
_RENAME_EXCHANGE = 2
_exchange_supported = True  # cleared at the first EINVAL/ENOSYS (a filesystem or kernel without it)


def _error(kind: str) -> type[FolderFileError]:
    return KIND_ERRORS.get(kind, FolderFileError)


def _a(kind: object) -> str:
    """``kind`` with its indefinite article ("a head", "an index")."""
    return f"{'an' if str(kind)[:1] in 'aeiou' else 'a'} {kind}"


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``folder`` (saves and recoveries of its entries take turns)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    global _exchange_supported
    if not _exchange_supported:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        _exchange_supported = False
        return False
    if func(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) == 0:  # -100: AT_FDCWD
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        _exchange_supported = False
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's manifest, or None when it has none; an unreadable one is returned as ``{}``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    ok = isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and isinstance(data.get("files"), dict)
    return data if ok else {}


def _legacy_ok(folder: Path, kind: str, names: set[str]) -> bool:
    for required, optional, fmt in _LEGACY.get(kind, []):
        dirs = {n for n in required | optional if n.endswith("/")}
        shown = {n + "/" if (folder / n).is_dir() else n for n in names}
        if not required <= shown or not shown <= required | optional:
            continue
        if any(not _owned(folder / d.rstrip("/"), "latent-checkpoint") for d in dirs & shown):
            continue
        if fmt is not None:
            try:
                if json.loads((folder / fmt[0]).read_text()).get("format") != fmt[1]:
                    continue
            except (OSError, ValueError, AttributeError):
                continue
        return True
    return False


def _entries(folder: Path) -> set[str]:
    """Entries of ``folder`` except the package's own leftovers (hidden temp and backup folders)."""
    return {name for name in os.listdir(folder) if not _LEFTOVER.match(name)}


def _owned(folder: Path, kind: str | None) -> bool:
    return not _foreign(folder, kind)


def _foreign(folder: Path, kind: str | None) -> list[str]:
    """Entries of an existing folder that the package did not write as ``kind`` (empty: the folder may go)."""
    if folder.is_symlink() or not folder.is_dir():
        return [folder.name]
    names = _entries(folder)
    manifest = read_manifest(folder)
    if manifest:
        if kind is not None and manifest.get("kind") != kind:
            return [f"{MANIFEST} (a native-retriever {manifest.get('kind')}, not {_a(kind)})"]
        listed = {name.split("/")[0] for name in manifest["files"]} | {MANIFEST}
        names -= listed
    elif manifest is None and kind is not None and names and _legacy_ok(folder, kind, names):
        return []
    # what remains may still be folders the package saved inside this one (a run's checkpoint/)
    return sorted(n for n in names if not ((folder / n).is_dir() and _nested_ours(folder / n)))


def _nested_ours(folder: Path) -> bool:
    manifest = read_manifest(folder)
    if manifest:
        return _owned(folder, manifest.get("kind"))
    return manifest is None and _legacy_ok(folder, "latent-checkpoint", _entries(folder))


def check_output_folder(path: str | os.PathLike, kind: str) -> Path:
    """Refuse, before any work, an output path a save of ``kind`` may not replace; return it made absolute.

    A missing path, an empty folder, or a folder the package wrote (its manifest and nothing but the files the
    manifest lists; or exactly the files the previous version wrote) may be replaced. Anything else raises the
    kind's error (HeadFileError, IndexFileError, ...) naming the path and the fix.
    """
    target = Path(os.path.abspath(path))
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if not target.exists():
        return target
    if not target.is_dir():
        raise _error(kind)(
            f"{target} exists and is not a folder; refusing to replace it by {_a(kind)}. "
            "Choose another output path, or remove that file."
        )
    other = (read_manifest(target) or {}).get("kind", kind)
    if other != kind:
        raise _error(kind)(
            f"{target} holds a native-retriever {other}, not {_a(kind)}; refusing to replace it by {_a(kind)}. "
            f"Choose another output path, or remove that {other} folder yourself if it is not needed."
        )
    foreign = _foreign(target, kind)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise _error(kind)(
            f"{target} holds files native-retriever did not write ({shown}); refusing to replace it by {_a(kind)}. "
            "Choose another output path, or remove that folder yourself if nothing in it is needed."
        )
    return target


def _clean_leftovers(target: Path) -> None:
    for entry in target.parent.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == target.name:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _restore_backup(target: Path, kind: str | None) -> bool:
    """Put back the complete backup of a save that crashed between its two renames (target missing)."""
    for entry in sorted(target.parent.glob(f".{glob_escape(target.name)}.old*"), key=os.path.getmtime, reverse=True):
        match = _LEFTOVER.match(entry.name)
        if not (match and match["name"] == target.name and entry.is_dir() and ".tmp-" not in entry.name):
            continue
        manifest = read_manifest(entry)
        complete = (
            _verify_files(entry, manifest) is None
            if manifest
            else (manifest is None and kind is not None and _legacy_ok(entry, kind, _entries(entry)))
        )
        if complete:
            os.rename(entry, target)
            _fsync(target.parent)
            return True
    return False


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def recover(path: str | os.PathLike, kind: str | None = None) -> Path:
    """Make ``path`` hold its last complete save again if a crash left it missing (a no-op otherwise)."""
    target = Path(os.path.abspath(path))
    if target.exists() or not target.parent.is_dir():
        return target
    try:
        with _locked(target.parent):
            if not target.exists():
                _restore_backup(target, kind)
    except OSError:  # e.g. a read-only location: nothing to recover there
        pass
    return target


@contextmanager
def reading(path: str | os.PathLike, kind: str | None = None) -> Iterator[Path]:
    """Yield ``path`` (recovered, see :func:`recover`) while a save into its parent folder waits.

    A load reads a folder file by file; a save that swapped in a new version between two reads would give it half of
    each (and a checksum error). Saves hold an exclusive ``flock`` on the parent; this holds a shared one, so loads
    run side by side and a save waits for them. Where the parent cannot be locked the block runs unlocked.
    """
    target = recover(path, kind)
    try:
        fd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # a missing parent: the loader reports the missing folder
        fd = None
    try:
        if fd is not None:
            with suppress(OSError):  # a filesystem without flock
                fcntl.flock(fd, fcntl.LOCK_SH)
        yield target
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _write_manifest(folder: Path, kind: str) -> None:
    files = {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "kind": kind, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, names in os.walk(folder, topdown=False):
        for name in names:
            _fsync(Path(root) / name)
        _fsync(Path(root))


@contextmanager
def atomic_folder(folder: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``folder`` to write into; on success it replaces ``folder``.

    At every instant ``folder`` holds the complete old version or the complete new one (with a manifest of kind
    ``kind``); a crash or an exception in the block leaves the old one. A folder the package did not write is
    refused before the block runs (see :func:`check_output_folder`). Leftovers of crashed saves are removed.
    """
    target = check_output_folder(folder, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent):
        if not target.exists():
            _restore_backup(target, kind)
        target = check_output_folder(target, kind)  # again, now that no other save runs
        _clean_leftovers(target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            yield tmp
            _write_manifest(tmp, kind)
            _fsync_tree(tmp)
            if not target.exists():
                os.rename(tmp, target)
            elif _exchange(tmp, target):
                _fsync(target.parent)  # tmp now holds the old copy, deleted below
            else:
                backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
                os.rename(target, backup)
                os.rename(tmp, target)  # a crash before this line: recover() restores the backup
                _fsync(target.parent)
                shutil.rmtree(backup, ignore_errors=True)
            _fsync(target.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temp path beside the file ``path``; on success it is fsynced and renamed over ``path``."""
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent):
        _clean_leftovers(target)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            yield tmp
            if tmp.exists():  # the block may decide to write nothing
                _fsync(tmp)
                os.replace(tmp, target)
            _fsync(target.parent)
        finally:
            tmp.unlink(missing_ok=True)


def _verify_files(folder: Path, manifest: dict, trusted: tuple[str, ...] = ()) -> str | None:
    """Why ``folder`` does not match its manifest (None when it does)."""
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if name not in trusted and sha256_file(path) != digest:
            return f"{path} does not match its sha256 in {folder / MANIFEST} (altered or corrupt)"
    return None


def verify_folder(folder: str | os.PathLike, kind: str, trusted: tuple[str, ...] = ()) -> dict | None:
    """Check a saved folder against its manifest and return the manifest (None for a folder without one).

    Every listed file must be present with its sha256 (files in ``trusted`` only present: the caller checks
    them); a manifest of another kind or a newer format version is refused. Problems raise the kind's error
    naming the file and the fix.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    error, fix = _error(kind), _FIXES.get(kind, "save it again")
    where = folder / MANIFEST
    if not manifest:
        raise error(f"{where} is not a valid native-retriever manifest; {fix}.")
    version = manifest.get("version")
    if version != MANIFEST_VERSION:
        raise error(
            f"{where} has folder format version {version!r}; this native-retriever reads version "
            f"{MANIFEST_VERSION} (upgrade native-retriever, or {fix})."
        )
    if manifest.get("kind") != kind:
        other = manifest.get("kind")
        raise error(f"{folder} holds a native-retriever {other}, not {_a(kind)}; pass {_a(kind)} folder.")
    problem = _verify_files(folder, manifest, trusted)
    if problem:
        raise error(f"{problem}; {fix}.")
    return manifest


def read_config(path: Path, fmt: str, what: str) -> dict:
    """A JSON config whose ``format`` field is ``fmt``; anything else raises HeadFileError naming ``path``."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeadFileError(f"{path} is not valid JSON ({exc}); restore or retrain the {what}.") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise HeadFileError(f"{path} is not a native-retriever {what} config (format != {fmt!r}).")
    return data


def fingerprints_match(a: list[float], b: list[float], rtol: float = 2e-2, atol: float = 1e-3) -> bool:
    """True when two fingerprints are the same model's (tolerant of dtype rounding)."""
    return len(a) == len(b) and all(abs(x - y) <= atol + rtol * abs(y) for x, y in zip(a, b))


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
