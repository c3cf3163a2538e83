"""Notices said once per process on the ``native_retriever`` logger (a fallback a user should know about, not an
error, and not worth repeating on every call)."""

from __future__ import annotations

import logging
import threading

_said: set[str] = set()
_lock = threading.Lock()

#: Why a search tool with a query-mode head runs its own prefill (both frameworks' tools say it).
QUERY_NOT_CAPTURED = (
    "This query-mode head reads the states of a search query after the conversation, in the head's prompt format; "
    "the agent's own tool-call generation ran in a prompt with tool definitions, which is not that format, so its "
    "states cannot be used. The search tool runs one prefill of the conversation and the query instead."
)


def say_once(message: str) -> None:
    """Log ``message`` as a warning the first time it is said in this process."""
    with _lock:
        if message in _said:
            return
        _said.add(message)
    logging.getLogger("native_retriever").warning(message)
