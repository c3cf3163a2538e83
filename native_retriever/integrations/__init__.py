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
