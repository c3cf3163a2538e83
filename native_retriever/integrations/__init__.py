"""Drop-ins for agent frameworks. Each submodule needs its extra; importing ``native_retriever`` imports neither."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the pip command that installs the extra it belongs to."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"This integration needs {module!r}, which is not installed. "
            f'Install it with: pip install "native-retriever[{extra}]"'
        ) from error


def append_question(history: list[dict], question: str) -> list[dict]:
    """The conversation to embed: ``history`` then ``question`` as the last user turn, unless it already is."""
    last = history[-1] if history else None
    if last is not None and last.get("role") == "user" and str(last.get("content", "")).strip() == question.strip():
        return list(history)
    return [*history, {"role": "user", "content": question}]
