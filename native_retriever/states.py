"""Token states of a prefill and the span a head reads: what the embedder, capture and training share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .conversation import EncodedConversation

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def pad_token_id(source) -> int:
    """The id to pad batches with: ``source``'s ``pad_token_id``, else its ``eos_token_id`` (the first of several),
    else 0. ``source`` is a tokenizer or a model config; padded positions are masked, so any valid id serves."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(source, name, None)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


@torch.inference_mode()
def token_states(
    model: PreTrainedModel, sequences: Sequence[Sequence[int]], layers: Sequence[int]
) -> list[torch.Tensor]:
    """One prefill of each token sequence (right-padded batch); returns (T_i, H) states per sequence.

    Layer -1 is the final (normed) output; other indices select ``hidden_states[i]``; several are averaged.
    """
    device = next(model.parameters()).device
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id(model.config), dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    want_all = list(layers) != [-1]
    out = model.base_model(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        output_hidden_states=want_all,
        use_cache=False,
    )
    if want_all:
        picked = [out.last_hidden_state if i == -1 else out.hidden_states[i] for i in layers]
        hidden = torch.stack(picked).mean(0)
    else:
        hidden = out.last_hidden_state
    return [hidden[row, : len(ids)] for row, ids in enumerate(sequences)]


def select_tokens(encoded: EncodedConversation, span: str, limit: int) -> tuple[int, int]:
    """The [start, end) tokens of ``span`` (``HeadConfig.span``), at most ``limit`` of them, the most recent kept."""
    end = encoded.query[0] if encoded.query else len(encoded.input_ids)
    if span == "query":
        if encoded.query is None:
            raise ValueError("This head reads generated search-query tokens; use embed_generated_query.")
        start, end = encoded.query
    elif span == "last_user":
        start, end = encoded.last_user
    elif span == "last":
        start = end - 1
    else:
        start = 0
    return max(start, end - limit), end


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (T_i, H) tensors left-aligned into (B, T, H) with a boolean mask."""
    longest = max(s.shape[0] for s in states)
    batch = states[0].new_zeros((len(states), longest, states[0].shape[1]))
    mask = torch.zeros((len(states), longest), dtype=torch.bool, device=states[0].device)
    for row, s in enumerate(states):
        batch[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = True
    return batch, mask
