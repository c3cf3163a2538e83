"""Greedy text generation with the agent LLM: standalone search queries (generate-then-encode) and plain replies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .conversation import clean_query, rewrite_messages, tokenize_chat
from .states import pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_text(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], max_new_tokens: int
) -> str:
    """Greedy continuation of a chat after the generation prompt, decoded without special tokens."""
    return generate_texts(model, tokenizer, [messages], max_new_tokens)[0]


@torch.inference_mode()
def generate_texts(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chats: Sequence[Sequence[dict]], max_new_tokens: int
) -> list[str]:
    """Greedy continuations of several chats in one left-padded batch."""
    prompts = [{"input_ids": tokenize_chat(tokenizer, chat)} for chat in chats]
    batch = tokenizer.pad(prompts, padding=True, return_tensors="pt", padding_side="left")
    batch = batch.to(next(model.parameters()).device)
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id(tokenizer),
    )
    return [
        text.strip() for text in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    ]


def generate_query(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, messages: Sequence, max_new_tokens: int = 32
) -> str:
    """The agent LLM rewrites the last turn into a standalone search query (greedy; generate-then-encode)."""
    return generate_queries(model, tokenizer, [messages], max_new_tokens)[0]


def generate_queries(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence],
    max_new_tokens: int = 32,
) -> list[str]:
    """Standalone search queries for several conversations, generated in one batch."""
    chats = [rewrite_messages(messages) for messages in conversations]
    return [clean_query(text) for text in generate_texts(model, tokenizer, chats, max_new_tokens)]
