"""The differences between the transformers versions this package supports (>= 4.46), in one place.

transformers 5.24 renamed the key-value cache of every model's ``forward`` and ``generate``, argument and output
field alike, from ``past_key_values`` to ``cache``; the old name still works there but warns on every call.
"""

from __future__ import annotations

import inspect
from functools import cache as memoize
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@memoize
def _cache_name(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_kwargs(model: PreTrainedModel, cache) -> dict:
    """``{name: cache}`` under the argument name that ``model``'s ``forward`` and ``generate`` take."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    return {_cache_name(type(base)): cache}


def output_cache(output):
    """The key-value cache a forward returned (field ``cache``; ``past_key_values`` before transformers 5.24)."""
    cache = output.get("cache")
    return cache if cache is not None else output.get("past_key_values")


def call_cache(kwargs: dict):
    """The key-value cache a forward call was given, under either name (for forward hooks)."""
    return kwargs["cache"] if kwargs.get("cache") is not None else kwargs.get("past_key_values")


def crop_cache(cache, length: int) -> None:
    """Cut ``cache`` back to its first ``length`` positions (transformers 5 takes the number of positions to
    remove, as a negative int; earlier versions the length to keep)."""
    parameters = inspect.signature(cache.crop).parameters
    if "tokens_to_remove" in parameters:
        cache.crop(length - cache.get_seq_length())
    else:
        cache.crop(length)
