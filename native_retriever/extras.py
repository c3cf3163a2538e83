"""Optional dependencies: which extra installs what, and a check that names the pip line before anything loads.

``pip install native-retriever`` installs what inference needs (torch, transformers, sentence-transformers, FAISS,
BM25 for hybrid search, the default models). Evaluation, training and the latent view need packages of their own,
installed by extras.
"""

from __future__ import annotations

import importlib.util

from .errors import MissingExtraError

#: The packages (import names) each extra brings; ``[dev]`` brings them all.
EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("ranx",),
    "train": ("ranx", "matplotlib"),
    "latent": ("peft",),
}


def pip_line(extra: str) -> str:
    """The command that installs ``extra``."""
    return f'pip install "native-retriever[{extra}]"'


def missing(*modules: str) -> list[str]:
    """Those of ``modules`` (top-level import names) that cannot be imported here."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install, or sys.modules[name] set to None
            found = False
        if not found:
            absent.append(name)
    return absent


def require(extra: str, *modules: str, what: str | None = None) -> None:
    """Raise MissingExtraError, naming the pip line, when a package of ``extra`` is not installed.

    Args:
        extra: the extra that installs the packages (``eval``, ``train``, ``latent``).
        *modules: the import names needed (default: every package of the extra).
        what: the feature that needs them, for the message (default: the extra's name).

    Raises:
        MissingExtraError: a package is missing (the CLI exits with status 2 and prints the message).
    """
    if extra not in EXTRAS:
        raise ValueError(f"Unknown extra {extra!r}; choose from {', '.join(EXTRAS)}.")
    absent = missing(*(modules or EXTRAS[extra]))
    if absent:
        raise MissingExtraError(
            f"{what or extra.capitalize()} needs {', '.join(absent)}, which {'is' if len(absent) == 1 else 'are'} "
            f"not installed: {pip_line(extra)}"
        )
