"""A small RAG turn for Hugging Face chat models: retrieved passages in, a short answer out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .conversation import clean_query, rewrite_messages, validate_conversation
from .index import SearchHit

ANSWER_SYSTEM_PROMPT = "Answer the user's last question in one short sentence, using only these passages:"


def answer_messages(messages: Sequence, hits: Sequence[SearchHit]) -> list[dict]:
    """The conversation with the retrieved passages put in front as a system message."""
    passages = "\n".join(f"[{n}] {hit.text}" for n, hit in enumerate(hits, 1))
    conversation = [m for m in validate_conversation(messages) if m["role"] != "system"]
    return [{"role": "system", "content": f"{ANSWER_SYSTEM_PROMPT}\n{passages}"}, *conversation]


def generate_answer(model, tokenizer, messages: Sequence, hits: Sequence[SearchHit], max_new_tokens: int = 48) -> str:
    """Greedy answer of the agent LLM to the last question, grounded in ``hits``."""
    return generate_text(model, tokenizer, answer_messages(messages, hits), max_new_tokens)


@torch.inference_mode()
def generate_text(model, tokenizer, messages: Sequence[dict], max_new_tokens: int) -> str:
    """Greedy continuation of a chat after the generation prompt, decoded without special tokens."""
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt")
    ids = (ids if isinstance(ids, torch.Tensor) else ids["input_ids"]).to(next(model.parameters()).device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def generate_query(model, tokenizer, messages: Sequence, max_new_tokens: int = 32) -> str:
    """The agent LLM rewrites the last turn into a standalone search query (greedy; generate-then-encode)."""
    return clean_query(generate_text(model, tokenizer, rewrite_messages(messages), max_new_tokens))
