"""Training conversations from a corpus alone, written by the user's own LLM.

For each passage the LLM writes a short conversation a user could have about it: a first question grounded in the
passage, an answer, then follow-up questions that lean on the earlier turns the way real users do ("when did she
...?"), each turn's positive the source passage. The prompts (:data:`DEFAULT_PROMPTS`, overridable) show the LLM
one worked example (a made-up passage, not from any data set) and start each question with a question word, so that
even a 135M model writes questions rather than answers.

Generation is the slow step: it is cached in a JSONL file (one line per passage, appended as each batch finishes,
so a rerun resumes where it stopped; a line cut off by a crash is dropped), shows a progress bar, and is keyed by
the LLM, the prompts and the settings. Questions the teacher cannot tie back to their source passage (the source is
not in the teacher's top ``check_k`` for the conversation so far) are filtered out; the counts are reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checks import check_count
from ..conversation import history_text, tokenize_chat
from ..data import RetrievalData
from ..errors import DataFormatError, InvalidArgumentError, NativeRetrieverError
from ..files import atomic_file, fingerprints_match, glob_escape
from ..models import llm_info
from ..states import pad_token_id
from .distributed import Ranks

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..teacher import Teacher

#: The worked example every prompt starts with (made up for this purpose; no data set's text).
EXAMPLE_PASSAGE = (
    "The lighthouse on Marrow Point was built in 1871 by Ellen Price, the first woman to run a lighthouse in the "
    "county. She kept the lamp burning for thirty years, and during the great storm of 1889 she rowed out twice to "
    "bring fishermen ashore."
)
DEFAULT_PROMPTS = {
    # the user message that asks for the first question; {passage} is the passage's text
    "first": "Passage: {passage}\n\nAsk a question about the passage.",
    # the user message that asks for each follow-up question
    "follow_up": "Ask a follow-up question that refers back to the conversation with a pronoun.",
    # the system message of the answers; {passage} is the passage's text
    "answer": "Answer the user's last question in one short sentence, using only this passage:\n{passage}",
    # the worked example: its passage, questions (one per turn) and answers
    "example_passage": EXAMPLE_PASSAGE,
    "example_questions": [
        "Who built the lighthouse on Marrow Point?",
        "When did she build it?",
        "What did she do during the great storm?",
    ],
    "example_answers": ["Ellen Price built it.", "In 1871.", "She rowed out twice to bring fishermen ashore."],
}
#: The first words questions are started with, in turn (the LLM writes the rest).
QUESTION_WORDS = ("What", "Who", "Why", "How", "Where", "When")


@dataclass
class SyntheticConfig:
    """How conversations are written: ``turns`` questions per passage, at most ``question_tokens`` and
    ``answer_tokens`` tokens each, passages of fewer than ``min_words`` words skipped, ``batch_size`` passages at
    a time; a question is kept when its passage is in the teacher's top ``check_k``."""

    turns: int = 3
    question_tokens: int = 32
    answer_tokens: int = 32
    min_words: int = 25
    batch_size: int = 8
    check_k: int = 10
    prompts: dict = field(default_factory=lambda: dict(DEFAULT_PROMPTS))

    def __post_init__(self) -> None:
        for name in ("turns", "question_tokens", "answer_tokens", "batch_size", "check_k"):
            check_count(getattr(self, name), name)
        unknown = set(self.prompts) - set(DEFAULT_PROMPTS)
        if unknown:
            raise InvalidArgumentError(f"Unknown prompt keys {sorted(unknown)}; the keys are {list(DEFAULT_PROMPTS)}.")
        self.prompts = {**DEFAULT_PROMPTS, **self.prompts}
        for key in ("first", "answer"):
            if "{passage}" not in self.prompts[key]:
                raise InvalidArgumentError(f"The {key!r} prompt must contain {{passage}}, where the passage goes.")
        if len(self.prompts["example_questions"]) < self.turns or len(self.prompts["example_answers"]) < self.turns:
            raise InvalidArgumentError(f"The worked example needs at least {self.turns} questions and answers.")

    def key(self, llm_name: str) -> str:
        """What a cached generation depends on, as a short hash."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "check_k", "min_words")}
        return hashlib.sha256(json.dumps([llm_name, settings], sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SyntheticCounts:
    """What generation and filtering did: passages read, skipped as too short, questions written, questions the LLM
    did not write (an empty or non-question reply), questions the teacher could not tie to their passage, kept."""

    passages: int = 0
    too_short: int = 0
    questions: int = 0
    no_question: int = 0
    filtered_out: int = 0
    kept: int = 0


def _question(text: str, start: str) -> str | None:
    """The first line of a generated question (``start`` + the LLM's words), or None when it is not a question."""
    line = (start + text).split("\n")[0].strip().strip('"')
    if len(line.split()) < 3 or "?" not in line:
        return None
    return line[: line.index("?") + 1]


def _answer(text: str) -> str:
    """The first sentence of a generated answer (answers in real conversations are short)."""
    line = text.strip().split("\n")[0].strip()
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0]
    return sentence or "I am not sure."


@torch.inference_mode()
def _generate(model, tokenizer, chats: list[list[dict]], starts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``chats`` after the generation prompt and each ``start`` text (one batch)."""
    prompts = [
        {"input_ids": tokenize_chat(tokenizer, chat) + tokenizer(start, add_special_tokens=False)["input_ids"]}
        for chat, start in zip(chats, starts)
    ]
    batch = tokenizer.pad(prompts, padding=True, return_tensors="pt", padding_side="left")
    batch = batch.to(next(model.parameters()).device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id(tokenizer))
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def _example(config: SyntheticConfig) -> list[dict]:
    """The worked example as chat turns: the passage, then question requests and questions."""
    p = config.prompts
    turns = [{"role": "user", "content": p["first"].format(passage=p["example_passage"])}]
    for n, question in enumerate(p["example_questions"][: config.turns]):
        if n:
            turns.append({"role": "user", "content": p["follow_up"]})
        turns.append({"role": "assistant", "content": question})
    return turns


def write_conversations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, passages: Sequence[dict], config: SyntheticConfig
) -> list[list[dict]]:
    """One conversation per passage (user questions and assistant answers, ending with a question); a turn the LLM
    did not write as a question ends its conversation there (possibly empty)."""
    p = config.prompts
    example = _example(config)
    questions: list[list[str]] = [[] for _ in passages]
    answers: list[list[str]] = [[] for _ in passages]
    asking = [[*example, {"role": "user", "content": p["first"].format(passage=d["text"])}] for d in passages]
    alive = list(range(len(passages)))
    for turn in range(config.turns):
        if not alive:
            break
        starts = [QUESTION_WORDS[(i + turn) % len(QUESTION_WORDS)] for i in alive]
        texts = _generate(model, tokenizer, [asking[i] for i in alive], starts, config.question_tokens)
        written = []
        for i, start, text in zip(alive, starts, texts):
            question = _question(text, start)
            if question is not None:
                questions[i].append(question)
                written.append(i)
        alive = written
        if turn == config.turns - 1 or not alive:
            break
        chats = [
            [
                {"role": "system", "content": p["answer"].format(passage=passages[i]["text"])},
                *_chat(questions[i], answers[i]),
            ]
            for i in alive
        ]
        for i, text in zip(alive, _generate(model, tokenizer, chats, [""] * len(alive), config.answer_tokens)):
            answers[i].append(_answer(text))
            asking[i] += [
                {"role": "assistant", "content": questions[i][-1]},
                {"role": "user", "content": p["follow_up"]},
            ]
    return [_chat(qs, ans) for qs, ans in zip(questions, answers)]


def _chat(questions: list[str], answers: list[str]) -> list[dict]:
    """The conversation of ``questions`` with the ``answers`` between them, ending with the last question."""
    out: list[dict] = []
    for n, question in enumerate(questions):
        if n:
            out.append({"role": "assistant", "content": answers[n - 1]})
        out.append({"role": "user", "content": question})
    return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_caches(path: Path) -> dict[str, dict[str, dict]]:
    """The cached lines of ``path`` and of its per-rank files (``<stem>.rank<r>.jsonl``): {passage id: {the
    passage text's digest: line}}, so a conversation about an older text of a passage is never taken for it."""
    done: dict[str, dict[str, dict]] = {}
    for part in [path, *sorted(path.parent.glob(f"{glob_escape(path.stem)}.rank*{path.suffix}"))]:
        for pid, record in _read_cache(part).items():
            done.setdefault(pid, {})[record.get("sha")] = record
    return done


def _read_cache(path: Path) -> dict[str, dict]:
    """The cached lines by passage id (a later line wins); a last line cut off by a crash is dropped (and removed
    from the file)."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as handle:
            handle.truncate(len(raw))
    out = {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(
                f"{path}:{number} is not valid JSON ({exc.msg}); delete the file to write the conversations again."
            ) from exc
        out[record["passage"]] = record
    return out


def generate_conversations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Sequence[dict],
    cache_file: str | os.PathLike,
    config: SyntheticConfig | None = None,
    show_progress: bool | None = None,
    ranks: Ranks | None = None,
) -> tuple[dict[str, list[dict]], SyntheticCounts]:
    """The LLM's conversation about each passage of ``corpus`` (``{"id", "text"}`` records), cached in
    ``cache_file`` (JSONL; a rerun writes only the passages not in it). Returns {passage id: messages} (passages too
    short, or whose first question the LLM did not write, have none) and the counts so far.

    Under several processes (``ranks``) the batches still to write are dealt out, batch ``b`` to rank
    ``b % world`` (the same batches one process would write, so the same conversations), each rank appending to
    its own ``<cache>.rank<r>.jsonl``; every rank then reads all the files. Any later run, with any number of
    processes, reads them all and resumes. A cache that other weights wrote is refused (:func:`check_writer`)."""
    config = config or SyntheticConfig()
    ranks = ranks or Ranks()
    path = Path(cache_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model is not None:
        check_writer(path, llm_info(model), ranks)
    done = _read_caches(path)
    ranks.barrier()  # every rank has read the same cache before any writes
    counts = SyntheticCounts(passages=len(corpus))
    todo = []
    for doc in corpus:
        if len(doc["text"].split()) < config.min_words:
            counts.too_short += 1
        elif _sha(doc["text"]) not in done.get(doc["id"], {}):  # new, or its text changed
            todo.append(doc)
    batches = [todo[start : start + config.batch_size] for start in range(0, len(todo), config.batch_size)]
    mine = batches[ranks.rank :: ranks.world]
    total = sum(len(batch) for batch in mine)
    show = (total > config.batch_size if show_progress is None else show_progress) and total > 0
    own = path if ranks.world == 1 else path.with_name(f"{path.stem}.rank{ranks.rank}{path.suffix}")
    with (
        open(own, "a", encoding="utf-8") as handle,
        tqdm(total=total, disable=not show, desc="Writing conversations", unit="passage") as bar,
    ):
        for batch in mine:
            for doc, messages in zip(batch, write_conversations(model, tokenizer, batch, config)):
                record = {"passage": doc["id"], "sha": _sha(doc["text"]), "messages": messages}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    ranks.barrier()  # every rank's batches are written
    done = _read_caches(path)
    wanted = [doc for doc in corpus if len(doc["text"].split()) >= config.min_words]
    missing = [doc["id"] for doc in wanted if _sha(doc["text"]) not in done.get(doc["id"], {})]
    if missing:
        raise DataFormatError(
            f"No conversation was written for {len(missing)} passage(s) ({', '.join(missing[:3])}) after every "
            "process finished; run the command again (the conversations written so far are kept)."
        )
    conversations = {doc["id"]: done[doc["id"]][_sha(doc["text"])]["messages"] for doc in wanted}
    counts.questions = sum(m["role"] == "user" for ms in conversations.values() for m in ms)
    counts.no_question = len(wanted) * config.turns - counts.questions
    return conversations, counts


def check_writer(cache_file: Path, llm: dict, ranks: Ranks | None = None) -> None:
    """Refuse a generation cache that another LLM's weights wrote under this LLM's name (the file is named by the
    LLM's name; ``<cache>.llm.json`` beside it records the weights' fingerprint, written on first use)."""
    record = cache_file.with_name(f"{cache_file.stem}.llm.json")
    if record.is_file():
        written = json.loads(record.read_text())
        if not fingerprints_match(written.get("fingerprint") or [], llm["fingerprint"]):
            raise NativeRetrieverError(
                f"{cache_file} holds conversations written by other weights than this {llm['name']!r} "
                f"(the fingerprint in {record.name} differs); delete both files or use another --cache."
            )
    elif ranks is None or ranks.main:
        with atomic_file(record) as tmp:
            tmp.write_text(json.dumps({"name": llm["name"], "fingerprint": llm["fingerprint"]}))


def filter_by_teacher(
    teacher: Teacher,
    corpus: Sequence[dict],
    conversations: dict[str, list[dict]],
    counts: SyntheticCounts,
    check_k: int = 10,
    name: str = "synthetic",
) -> RetrievalData:
    """The turns whose source passage is in the teacher's top ``check_k`` for the conversation so far (its
    history-aware text), as training data: one query per kept turn, ``story_id`` the passage."""
    turns = []
    for pid, messages in conversations.items():
        for end in (i + 1 for i, m in enumerate(messages) if m["role"] == "user"):
            turns.append((pid, messages[:end]))
    if not turns:
        raise DataFormatError(
            "The LLM wrote no question about any passage; check the passages (too short?) and the prompts."
        )
    doc_vectors = teacher.encode([d["text"] for d in corpus])
    query_vectors = teacher.encode([history_text(messages) for _, messages in turns])
    ids = [d["id"] for d in corpus]
    top = np.argsort(-(query_vectors @ doc_vectors.T), axis=1)[:, :check_k]
    queries, qrels = [], {}
    for (pid, messages), row in zip(turns, top):
        if pid not in {ids[j] for j in row}:
            counts.filtered_out += 1
            continue
        qid = f"synthetic:{pid}:{len(messages) // 2}"
        queries.append({"id": qid, "messages": messages, "question": messages[-1]["content"], "story_id": pid})
        qrels[qid] = {pid: 1}
    counts.kept = len(queries)
    return RetrievalData(name, list(corpus), queries, qrels)
