"""The one formatter for conversations: chat messages -> model input, shared by training, evaluation and inference.

A conversation is a list of ``{"role": "system"|"user"|"assistant", "content": str}`` dicts that ends with the
user's current question. It is rendered with the LLM's own chat template and the generation prompt, exactly as
the agent sees it when it starts its answer. Conversations longer than ``PromptFormat.max_tokens`` are cut from
the oldest turns: a leading system message and the current question are always kept (an assistant turn left at
the front is dropped too, so the kept part starts with a user turn). A current question that alone does not fit
is refused rather than silently cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .errors import ConversationError

ROLES = ("system", "user", "assistant")

# generate-then-encode: the conversation's recent turns as chat, then this request about the last question.
# Chosen over a transcript-in-one-message prompt, which SmolLM2-135M continues instead of rewriting.
REWRITE_INSTRUCTION = (
    "Rewrite this question so it can be understood without the conversation, replacing pronouns with names: "
    '"{question}"'
)
REWRITE_CONTEXT_MESSAGES = 6


@dataclass(frozen=True)
class PromptFormat:
    """How a conversation becomes model input; recorded in every head trained on it."""

    system_prompt: str | None = None  # None: the chat template's own default
    max_tokens: int = 512

    def to_dict(self) -> dict:
        """The format as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptFormat:
        """A format from `to_dict`'s output (unknown keys ignored)."""
        return cls(**{key: data[key] for key in ("system_prompt", "max_tokens") if key in data})


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of a formatted conversation and the token spans a head may read."""

    input_ids: list[int]
    last_user: tuple[int, int]  # tokens of the current question's content
    query: tuple[int, int] | None  # tokens of an appended search query (head mode "query")
    dropped_messages: int  # oldest messages cut to fit the window


def validate_conversation(messages: Sequence) -> list[dict]:
    """Check a conversation and return it as plain dicts; raises ConversationError naming the fix."""
    if isinstance(messages, str):
        raise ConversationError(
            "A conversation must be a list of {'role', 'content'} messages, not a string; "
            "use embed_query(text) for a standalone query."
        )
    if not messages:
        raise ConversationError("The conversation is empty; pass at least one user message.")
    checked = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ConversationError(
                f"Message {position} is {type(message).__name__}, not a dict with 'role' and 'content'; "
                "convert framework message objects first (the integrations do this for you)."
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ConversationError(f"Message {position} has role {role!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise ConversationError(
                f"Message {position} has content of type {type(content).__name__}; content must be a string "
                "(join multi-part content into text first)."
            )
        if role == "system" and position != 0:
            raise ConversationError(f"Message {position} is a system message; only the first message may be one.")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "user":
        raise ConversationError(
            f"The conversation ends with a {checked[-1]['role']} message; it must end with the user's current "
            "question (retrieve before the assistant answers)."
        )
    if not checked[-1]["content"].strip():
        raise ConversationError("The current question (last user message) is empty.")
    return checked


def _with_system(messages: list[dict], fmt: PromptFormat) -> list[dict]:
    if fmt.system_prompt is not None and messages[0]["role"] != "system":
        return [{"role": "system", "content": fmt.system_prompt}, *messages]
    return messages


def _render(tokenizer, messages: list[dict], query: str | None) -> EncodedConversation:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    question = messages[-1]["content"]
    question_start = text.rfind(question)
    spans = {"last_user": (question_start, question_start + len(question))}
    if query is not None:
        spans["query"] = (len(text), len(text) + len(query))
        text += query
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    token_spans = {}
    for name, (start, end) in spans.items():
        inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end]
        token_spans[name] = (inside[0], inside[-1] + 1) if inside else (len(offsets) - 1, len(offsets))
    return EncodedConversation(list(encoding["input_ids"]), token_spans["last_user"], token_spans.get("query"), 0)


def encode_conversation(
    tokenizer, messages: Sequence, fmt: PromptFormat | None = None, query: str | None = None
) -> EncodedConversation:
    """Render and tokenize a conversation (plus an optional generated search query) within the window."""
    fmt = fmt or PromptFormat()
    kept = _with_system(validate_conversation(messages), fmt)
    dropped = 0
    while True:
        encoded = _render(tokenizer, kept, query)
        if len(encoded.input_ids) <= fmt.max_tokens:
            return EncodedConversation(encoded.input_ids, encoded.last_user, encoded.query, dropped)
        first = 1 if kept[0]["role"] == "system" else 0
        if len(kept) - first <= 1:
            raise ConversationError(
                f"The current question alone takes {len(encoded.input_ids)} tokens with the chat template, more "
                f"than the window of {fmt.max_tokens}; shorten it or raise PromptFormat.max_tokens."
            )
        del kept[first]
        dropped += 1
        while len(kept) - first > 1 and kept[first]["role"] != "user":
            del kept[first]
            dropped += 1


def history_text(messages: Sequence, last: int | None = None) -> str:
    """The conversation's contents joined by newlines (the teacher's history-aware query text)."""
    checked = [m for m in validate_conversation(messages) if m["role"] != "system"]
    if last is not None:
        checked = checked[-last:]
    return "\n".join(message["content"] for message in checked)


def rewrite_messages(messages: Sequence) -> list[dict]:
    """The generate-then-encode prompt: the recent turns, then a request to rewrite the last question."""
    checked = [m for m in validate_conversation(messages) if m["role"] != "system"]
    context = checked[:-1][-REWRITE_CONTEXT_MESSAGES:]
    while context and context[0]["role"] != "user":
        context = context[1:]
    request = REWRITE_INSTRUCTION.format(question=checked[-1]["content"])
    return [*context, {"role": "user", "content": request}]


def clean_query(text: str) -> str:
    """First non-empty line of a generated query, without quotes or a 'Query:' label."""
    for line in text.strip().splitlines():
        line = line.strip().strip('"').strip()
        if line.lower().startswith(("query:", "search query:")):
            line = line.split(":", 1)[1].strip().strip('"').strip()  # Query: "..." is common too
        if line:
            return line
    return text.strip()


def reply_closing_ids(tokenizer) -> list[int]:
    """Token ids the chat template puts after an assistant reply up to the next generation prompt.

    For ChatML (SmolLM2, Qwen2) that is ``<|im_end|>\n<|im_start|>assistant\n``: the latent view's explicit
    input in the ``closed`` layout ends on it, so its final token is a generation prompt like the latent view's.
    """
    marker = "\x00"
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text.split(marker)[-1], add_special_tokens=False)["input_ids"])


# Latent view: documents go through the same LLM encoder as conversations, as one user message in this format.
DOCUMENT_INSTRUCTION = "Represent this passage for retrieval:"


def document_messages(text: str) -> list[dict]:
    """The chat a passage is rendered as for the latent-view encoder (one user message)."""
    if not isinstance(text, str) or not text.strip():
        raise ConversationError(
            f"A document is {'empty' if isinstance(text, str) else type(text).__name__}; every document needs "
            "non-empty text (drop or fill that entry)."
        )
    return [{"role": "user", "content": f"{DOCUMENT_INSTRUCTION}\n{text.strip()}"}]


def encode_document(tokenizer, text: str, max_tokens: int = 256) -> list[int]:
    """Token ids of a passage in the document format with the generation prompt, its text cut at the end to fit."""

    def render(body: str) -> list[int]:
        chat = tokenizer.apply_chat_template(document_messages(body), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(chat, add_special_tokens=False)["input_ids"])

    ids = render(text)
    if len(ids) <= max_tokens:
        return ids
    budget = max_tokens - len(render(".")) + 1
    if budget < 1:
        raise ConversationError(f"The document prompt alone does not fit {max_tokens} tokens; raise the window.")
    body = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    while True:  # decoding and re-encoding may merge tokens differently: shrink until it fits
        ids = render(tokenizer.decode(body[:budget]) or ".")
        if len(ids) <= max_tokens:
            return ids
        budget -= max(1, len(ids) - max_tokens)
