"""Tests for native_retriever.compat: the KV cache under the name the installed transformers uses."""

from __future__ import annotations

import inspect
import warnings

import torch
from transformers import DynamicCache

from native_retriever.capture import _past_length
from native_retriever.compat import cache_kwargs, call_cache, output_cache


def test_a_cache_passed_and_read_back_continues_the_sequence_without_warnings(tiny_llm):
    name = "cache" if "cache" in inspect.signature(type(tiny_llm).forward).parameters else "past_key_values"
    cache = DynamicCache(config=tiny_llm.config)
    assert list(cache_kwargs(tiny_llm, cache)) == [name]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecated name warns on every call
        out = tiny_llm(input_ids=ids[:, :4], **cache_kwargs(tiny_llm, cache), use_cache=True)
        assert output_cache(out) is cache and cache.get_seq_length() == 4
        step = tiny_llm(input_ids=ids[:, 4:], **cache_kwargs(tiny_llm, cache), use_cache=True).logits[0, -1]
        full = tiny_llm(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


def test_a_forward_hook_sees_generate_s_cache_grow(tiny_llm):
    lengths = []
    hook = tiny_llm.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(_past_length(call_cache(kwargs))), with_kwargs=True
    )
    try:
        tiny_llm.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert lengths == [0, 4, 5]  # the prefill starts an empty cache; each decode step extends it
