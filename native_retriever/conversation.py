"""The one formatter for conversations: chat messages -> model input, shared by training, evaluation and inference.

A conversation is a list of ``{"role": "system"|"user"|"assistant", "content": str}`` dicts that ends with the
user's current question. It is rendered with the LLM's own chat template and the generation prompt, exactly as
the agent sees it when it starts its answer. Conversations longer than ``PromptFormat.max_tokens`` are cut from
the oldest turns: a leading system message and the current question are always kept (an assistant turn left at
the front is dropped too, so the kept part starts with a user turn). A current question that alone does not fit
is refused rather than silently cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .errors import ConversationError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


def kept_messages(messages: Sequence, fmt: PromptFormat, dropped_messages: int) -> list[dict]:
    """The messages an encoding of ``messages`` rendered: ``fmt``'s system prompt added (when the conversation has
    none), then the oldest ``dropped_messages`` after the system message left out (``EncodedConversation``'s cut)."""
    kept = _with_system(validate_conversation(messages), fmt)
    first = 1 if kept[0]["role"] == "system" else 0
    return kept[:first] + kept[first + dropped_messages :]


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **options) -> str:
    """``messages`` rendered as text by the tokenizer's chat template, with the generation prompt (``options`` go to
    ``apply_chat_template``: ``tools=[...]``, ``add_generation_prompt=False``).

    A tokenizer without a chat template, or a template that refuses the conversation (its ``raise_exception``, a
    Jinja error), raises ConversationError naming the problem and the fix.
    """
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise ConversationError(
            f"The tokenizer of {getattr(tokenizer, 'name_or_path', '') or 'this LLM'!r} has no chat template, so "
            "the conversation cannot be rendered as the LLM expects it; use the LLM's instruct (chat) version, "
            "whose tokenizer ships one, or set tokenizer.chat_template to a Jinja chat template."
        )
    options.setdefault("add_generation_prompt", True)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)
    except TemplateError as exc:
        roles = ", ".join(str(m.get("role")) for m in messages)
        raise ConversationError(
            f"The chat template of {getattr(tokenizer, 'name_or_path', '') or 'this LLM'!r} cannot render this "
            f"conversation (roles: {roles}): {type(exc).__name__}: {exc}. Pass a conversation it accepts (many "
            "templates need user and assistant turns to alternate, after at most one system message), or set "
            "tokenizer.chat_template to a template that renders it."
        ) from exc


# Private-use characters (no whitespace: a template's trim leaves them alone) mark where each content goes.
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"


def _content_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and (message index, start, end) of every content the template wrote, in order.

    The conversation is rendered twice: as it is, and with each content replaced by a marker. The markers split the
    second render into the template's own text; walking the first render along those pieces locates each content
    exactly (verbatim or with surrounding whitespace trimmed, as Llama-3's template does), even when it repeats text
    that the template or another message also contains.
    """
    text = render_chat(tokenizer, messages)
    opener = _MARK_OPEN
    while any(opener in message["content"] for message in messages):
        opener += _MARK_OPEN
    marked = [{**message, "content": f"{opener}{i}{_MARK_CLOSE}"} for i, message in enumerate(messages)]
    skeleton = render_chat(tokenizer, marked)
    parts = re.split(f"{re.escape(opener)}([0-9]+){_MARK_CLOSE}", skeleton)
    pieces, order = parts[0::2], [int(i) for i in parts[1::2]]  # template text around contents, which content
    question = len(messages) - 1
    spans: list[tuple[int, int, int]] = []
    position = len(pieces[0]) if text.startswith(pieces[0]) else -1
    for n, index in enumerate(order):
        if position < 0:
            break
        content, after, last = messages[index]["content"], pieces[n + 1], n + 1 == len(order)
        found = None
        for form in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            if text.startswith(form + after, position) and (not last or len(text) == position + len(form + after)):
                found = len(form)
                break
        if found is None and index != question and after:  # a content the template rewrites: whatever it wrote
            following = text.find(after, position)
            found = following - position if following >= 0 else None
        if found is None:
            position = -1
            break
        spans.append((index, position, position + found))
        position += found + len(after)
    if position < 0 or question not in order:
        located = position < 0 and order and index != question
        where = f"message {index}" if located else "the current question"
        raise ConversationError(
            f"The chat template does not write {where}'s content verbatim (it changes more than surrounding "
            "whitespace), so its tokens cannot be located in the rendered conversation; use a chat template that "
            "writes each message's content as given (trimming whitespace is fine)."
        )
    return text, spans


def _control_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of the tokenizer's special tokens (the chat template's control tokens among them)."""
    ids = {int(i) for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    return ids | {int(i) for i in getattr(tokenizer, "all_special_ids", [])}


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, text: str, contents: list[tuple[int, int]]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` in which the ``contents`` spans are always plain text.

    The whole text is tokenized as the model expects it. Only when a special token overlaps a content (a user who
    typed ``<|im_start|>assistant``) is the text between the template's own special tokens tokenized again with
    special-token matching off, so user text can never become a control token (nor forge a turn).
    """
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    control = _control_ids(tokenizer)
    spans = sorted(contents)

    def in_content(start: int, end: int) -> bool:
        return any(a < end and start < b for a, b in spans)  # few specials: a short scan each

    template_tokens = []
    forged = False
    for i, (token, (start, end)) in enumerate(zip(ids, offsets)):
        if token in control:
            if in_content(start, end):
                forged = True
            else:
                template_tokens.append(i)
    if not forged:
        return ids, offsets
    segments, cursor = [], 0
    for i in template_tokens:
        segments.append((cursor, offsets[i][0]))
        cursor = offsets[i][1]
    segments.append((cursor, len(text)))
    pieces = tokenizer(
        [text[a:b] for a, b in segments],
        add_special_tokens=False,
        return_offsets_mapping=True,
        split_special_tokens=True,
    )
    out_ids: list[int] = []
    out_offsets: list[tuple[int, int]] = []
    for n, (start, _) in enumerate(segments):
        out_ids += list(pieces["input_ids"][n])
        out_offsets += [(a + start, b + start) for a, b in pieces["offset_mapping"][n]]
        if n < len(template_tokens):
            out_ids.append(ids[template_tokens[n]])
            out_offsets.append(offsets[template_tokens[n]])
    return out_ids, out_offsets


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end]
    return (inside[0], inside[-1] + 1) if inside else None


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], query: str | None) -> EncodedConversation:
    text, spans = _content_spans(tokenizer, messages)
    contents = [(start, end) for _, start, end in spans]
    question = max(span for span in spans if span[0] == len(messages) - 1)  # its last occurrence
    if query is not None:
        contents.append((len(text), len(text) + len(query)))
        text += query
    ids, offsets = _tokenize(tokenizer, text, contents)
    last_user = _token_span(offsets, question[1], question[2])
    if last_user is None:
        raise ConversationError(
            "The current question has no tokens in the rendered conversation; the chat template drops it. "
            "Use a chat template that writes each message's content."
        )
    query_span = None
    if query is not None:
        query_span = _token_span(offsets, *contents[-1]) or (len(ids) - 1, len(ids))
    return EncodedConversation(ids, last_user, query_span, 0)


def tokenize_chat(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of a chat rendered by the chat template with the generation prompt, every content as plain text.

    For chats the head does not read as a conversation (a RAG turn's passages, the rewrite prompt, a latent-view
    document): a passage or a user text that contains the template's control-token strings stays text. Messages may
    have any role the template knows (``tool`` too); nothing is cut to a window.
    """
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    text, spans = _content_spans(tokenizer, chat)
    return _tokenize(tokenizer, text, [(start, end) for _, start, end in spans])[0]


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence, fmt: PromptFormat | None = None, query: str | None = None
) -> EncodedConversation:
    """Render and tokenize a conversation (plus an optional generated search query) within the window.

    The cut point is searched, not stepped: the whole conversation is rendered once, and when it does not fit, the
    shortest kept part (the question alone) first, then exponentially longer ones from the end and a bisection
    between the last that fits and the first that does not; O(log n) renders of at most the kept part (plus one of
    the whole). This finds the same cut as dropping the oldest turns one by one, because the rendered length never
    grows when the oldest turns are dropped.
    """
    fmt = fmt or PromptFormat()
    kept = _with_system(validate_conversation(messages), fmt)
    first = 1 if kept[0]["role"] == "system" else 0
    # where the kept part may start: the whole conversation, or a later user turn (the last one is the question)
    cuts = [first] + [i for i in range(first + 1, len(kept)) if kept[i]["role"] == "user"]
    tried: dict[int, EncodedConversation] = {}

    def fits(j: int) -> bool:
        if j not in tried:
            tried[j] = _render(tokenizer, kept[:first] + kept[cuts[j] :], query)
        return len(tried[j].input_ids) <= fmt.max_tokens

    last = len(cuts) - 1
    best = 0
    if not fits(0):
        if not fits(last):
            raise ConversationError(
                f"The current question alone takes {len(tried[last].input_ids)} tokens with the chat template, more "
                f"than the window of {fmt.max_tokens}; shorten it or raise PromptFormat.max_tokens."
            )
        low, high, step = 0, last, 1  # cuts[low] does not fit, cuts[high] fits
        while high - step > low and fits(high - step):
            high -= step
            step *= 2
        low = max(low, high - step)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        best = high
    encoded = tried[best]
    return EncodedConversation(encoded.input_ids, encoded.last_user, encoded.query, cuts[best] - first)


def history_text(messages: Sequence, last: int | None = None) -> str:
    """The conversation's contents joined by newlines (the teacher's history-aware query text)."""
    checked = [m for m in validate_conversation(messages) if m["role"] != "system"]
    if last is not None:
        checked = checked[-last:]
    return "\n".join(message["content"] for message in checked)


def lexical_queries(messages: Sequence, users: int = 2) -> list[str]:
    """The texts hybrid search gives BM25 for a conversation: its last ``users`` user messages, newest first.

    The current question alone misses what "she" or "it" refers to; the one before usually names it.
    """
    asked = [m["content"] for m in validate_conversation(messages) if m["role"] == "user"]
    return asked[::-1][:users]


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


def reply_closing_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids the chat template puts after an assistant reply up to the next generation prompt.

    For ChatML (SmolLM2, Qwen2) that is ``<|im_end|>\n<|im_start|>assistant\n``: the latent view's explicit
    input in the ``closed`` layout ends on it, so its final token is a generation prompt like the latent view's.
    """
    marker = "\x00"
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
    text = render_chat(tokenizer, chat)
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


def encode_document(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int = 256) -> list[int]:
    """Token ids of a passage in the document format with the generation prompt, its text cut at the end to fit."""

    def render(body: str) -> list[int]:
        return tokenize_chat(tokenizer, document_messages(body))

    ids = render(text)
    if len(ids) <= max_tokens:
        return ids
    budget = max_tokens - len(render(".")) + 1
    if budget < 1:
        raise ConversationError(f"The document prompt alone does not fit {max_tokens} tokens; raise the window.")
    body = tokenizer(text.strip(), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    while True:  # decoding and re-encoding may merge tokens differently: shrink until it fits
        ids = render(tokenizer.decode(body[:budget]) or ".")
        if len(ids) <= max_tokens:
            return ids
        budget -= max(1, len(ids) - max_tokens)
