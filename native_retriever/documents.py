"""Load a folder of your own text or Markdown files as passages ready for indexing.

Each file is split into paragraphs at blank lines; Markdown headings start a new chunk and become its title, and
paragraphs are packed greedily into chunks of at most ``max_words`` words (a longer paragraph is split at sentence
ends, a longer sentence by words).
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path

from .errors import DataFormatError, InvalidArgumentError

DEFAULT_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".markdown", ".rst")
MIN_MAX_WORDS = 20

_MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx"})
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def load_folder(
    folder: str | os.PathLike,
    *,
    max_words: int = 180,
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
) -> list[dict]:
    """Read every text/Markdown file under ``folder`` (recursively) and cut it into passages.

    Files are visited in sorted order of their path relative to ``folder``; hidden files and folders (names starting
    with ``.``) are skipped, and so, each with a warning naming it, is any file that is not valid UTF-8, whose path
    is not valid UTF-8, that is not a regular file (a FIFO, a socket, a device), or that is a link leading out of
    ``folder``. Links to folders are not followed. Empty files produce nothing.

    Returns a list of ``{"id": "<relative path>#<n>", "text": ..., "metadata": {"source": <relative path>,
    "title": ..., "chunk": n}}`` where ``n`` counts a file's chunks from 0 and the relative path uses ``/``. A chunk's
    title is the Markdown heading it falls under, or for text before any heading the file's first heading, or the
    file name without its extension when the file has no heading.

    Raises ``InvalidArgumentError`` (a ``ValueError``) when ``max_words`` is below 20 and ``DataFormatError`` when
    ``folder`` is not a folder or yields no passages.
    """
    if max_words < MIN_MAX_WORDS:
        raise InvalidArgumentError(f"max_words must be at least {MIN_MAX_WORDS}, got {max_words}")
    suffixes = tuple(dict.fromkeys(_normalize_extension(ext) for ext in extensions))
    if not suffixes:
        raise ValueError("extensions is empty; pass e.g. ('.txt', '.md')")
    root = Path(folder)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise DataFormatError(f"{root} {problem}; pass a folder of .txt or .md files")

    passages: list[dict] = []
    files, skipped = _find_files(root, suffixes)
    for rel in files:
        try:
            text = (root / rel).read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            warnings.warn(f"skipping {rel}: not valid UTF-8 ({exc.reason} at byte {exc.start})", stacklevel=2)
            skipped += 1
            continue
        except OSError as exc:
            warnings.warn(f"skipping {rel}: cannot be read ({exc})", stacklevel=2)
            skipped += 1
            continue
        markdown = Path(rel).suffix.lower() in _MARKDOWN_SUFFIXES
        for n, (title, body) in enumerate(_chunk_file(text, Path(rel).stem, markdown, max_words)):
            passages.append({"id": f"{rel}#{n}", "text": body, "metadata": {"source": rel, "title": title, "chunk": n}})

    if not passages:
        note = f" ({skipped} unreadable file(s) skipped)" if skipped else ""
        raise DataFormatError(
            f"no passages were found in {root}: it holds no non-empty files ending in {', '.join(suffixes)}{note}; "
            "hidden files and folders are skipped"
        )
    return passages


def _normalize_extension(ext: str) -> str:
    ext = ext.strip().lower()
    return ext if ext.startswith(".") else f".{ext}"


def _find_files(root: Path, suffixes: tuple[str, ...]) -> tuple[list[str], int]:
    """Relative POSIX paths of the matching, non-hidden, readable regular files under ``root``, sorted, and how many
    matching names were skipped (each with a warning)."""
    found: list[str] = []
    skipped = 0
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are listed, never entered
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            rel = (base / name).as_posix()
            problem = _unreadable(root / rel, rel, real_root)
            if problem:
                shown = os.fsencode(rel) if problem.startswith("its path") else rel
                warnings.warn(f"skipping {shown}: {problem}", stacklevel=3)
                skipped += 1
            else:
                found.append(rel)
    return sorted(found), skipped


def _unreadable(path: Path, rel: str, real_root: Path) -> str | None:
    """Why the file at ``path`` must not be read (None when it may): a path that is not UTF-8 (it could not be stored
    in the index), a link out of the folder, or something other than a regular file (reading a FIFO blocks)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its path is not valid UTF-8; rename it (e.g. with convmv) to index it"
    try:
        real = path.resolve(strict=True)
        mode = os.stat(real).st_mode
    except (OSError, RuntimeError) as exc:
        return f"cannot be read ({exc})"
    if not real.is_relative_to(real_root):
        return f"it is a link to {real}, outside the folder; copy the file into the folder to index it"
    if not stat.S_ISREG(mode):
        return "it is not a regular file (a FIFO, socket or device)"
    return None


def _sections(text: str, markdown: bool) -> list[tuple[str | None, list[str]]]:
    """Split a file into ``(heading, paragraphs)`` sections; only Markdown files have headings."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if markdown:
        text = _FRONT_MATTER.sub("", text, count=1)
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    lines: list[str] = []
    in_fence = False

    def end_paragraph() -> None:
        if lines:
            sections[-1][1].append("\n".join(lines).strip())
            lines.clear()

    for line in text.split("\n"):
        if markdown and _FENCE.match(line):
            in_fence = not in_fence
        heading = _HEADING.match(line) if markdown and not in_fence else None
        if heading:
            end_paragraph()
            sections.append(((heading.group(1) or "").strip(), []))
        elif not line.strip() and not in_fence:
            end_paragraph()
        else:
            lines.append(line.rstrip())
    end_paragraph()
    return sections


def _split_long(paragraph: str, max_words: int) -> list[str]:
    """Cut a paragraph of more than ``max_words`` words into pieces of at most ``max_words`` words."""
    units: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph.strip()):
        words = sentence.split()
        units.extend(" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words))
    return _pack(units, max_words, " ")


def _pack(units: list[str], max_words: int, joiner: str) -> list[str]:
    """Join consecutive units greedily while the total stays within ``max_words`` words."""
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for unit in units:
        n = len(unit.split())
        if current and count + n > max_words:
            chunks.append(joiner.join(current))
            current, count = [], 0
        current.append(unit)
        count += n
    if current:
        chunks.append(joiner.join(current))
    return chunks


def _chunk_file(text: str, stem: str, markdown: bool, max_words: int) -> list[tuple[str, str]]:
    """``(title, text)`` chunks of one file, in order."""
    sections = _sections(text, markdown)
    first_heading = next((heading for heading, _ in sections if heading), None)
    chunks: list[tuple[str, str]] = []
    for heading, paragraphs in sections:
        title = heading or first_heading or stem
        units: list[str] = []
        for paragraph in paragraphs:
            if not paragraph.split():
                continue
            units.extend([paragraph] if len(paragraph.split()) <= max_words else _split_long(paragraph, max_words))
        chunks.extend((title, chunk) for chunk in _pack(units, max_words, "\n\n"))
    return chunks
