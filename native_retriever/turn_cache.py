"""Conversations kept between turns: each recent conversation's KV cache and the head's states of its tokens.

An agent sends the whole conversation on every turn. With a :class:`ConversationCache`,
:func:`~native_retriever.agent.native_prompt` prefills only the tokens after the longest kept conversation that the
new one starts with (the previous answer and the new user message), so each token of a conversation is prefilled
once per conversation rather than once per turn. The head still reads the states of its whole span: the states of
the kept positions are kept beside the cache (causal attention: a position's states do not depend on what follows).

A kept conversation is taken out while a turn uses it, so concurrent turns never share a cache; a conversation
that another turn holds, or that was evicted, is prefilled from its start. Memory: a cache holds every layer's keys
and values of the conversation (SmolLM2-360M: 80 KiB a token), so ``max_conversations`` bounds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checks import check_count
from .compat import crop_cache

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache


@dataclass
class KeptConversation:
    """A conversation's formatted tokens ``ids``, a ``cache`` holding exactly them, and ``states`` (n, H): the head's
    layers' states of its last n positions (n <= the head's ``max_input_tokens``)."""

    ids: list[int]
    cache: DynamicCache = field(repr=False)
    states: torch.Tensor = field(repr=False)

    def cut(self, length: int) -> None:
        """Keep only the first ``length`` tokens (and their cache and states)."""
        if self.cache.get_seq_length() > length:
            crop_cache(self.cache, length)
        if length < len(self.ids):
            self.states = self.states[: max(0, len(self.states) - (len(self.ids) - length))]
            self.ids = self.ids[:length]


class ConversationCache:
    """The ``max_conversations`` most recently used conversations' caches (0 keeps none); thread-safe."""

    def __init__(self, max_conversations: int = 4) -> None:
        self.max_conversations = check_count(max_conversations, "max_conversations", 0)
        self._kept: OrderedDict[int, KeptConversation] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        """Drop every kept conversation."""
        with self._lock:
            self._kept.clear()

    def take(self, ids: Sequence[int]) -> KeptConversation | None:
        """Remove and return the longest kept conversation whose tokens begin ``ids``, cut so that at least the last
        token of ``ids`` is left to prefill; None when no kept conversation begins it."""
        ids = list(ids)
        with self._lock:
            best = max(
                (key for key, kept in self._kept.items() if ids[: len(kept.ids)] == kept.ids),
                key=lambda key: len(self._kept[key].ids),
                default=None,
            )
            if best is None:
                return None
            kept = self._kept.pop(best)
        try:
            kept.cut(len(ids) - 1)
        except (RuntimeError, ValueError):  # a cache that cannot be cut back (a sliding window past its size)
            return None
        return kept

    def put(self, kept: KeptConversation) -> None:
        """Keep ``kept`` for a later turn (the least recently used one goes when full)."""
        if self.max_conversations == 0:
            return
        with self._lock:
            self._kept[id(kept)] = kept
            self._kept.move_to_end(id(kept))
            while len(self._kept) > self.max_conversations:
                self._kept.popitem(last=False)
