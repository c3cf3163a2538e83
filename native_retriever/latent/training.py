"""Train a latent-view adapter (LaSER): explicit and latent views on one LoRA-adapted backbone, one readable loop.

Per micro-batch of B queries: each query's positive and one hard negative make the batch's 2B documents (the
other queries' documents are in-batch negatives; a document that is another positive of a query is left out of
that query's scores). Documents and queries go through the latent view; the explicit view reads the conversation
plus its rationale in one forward pass (embedding at the final token, trajectory states at rationale segment
boundaries). Losses: InfoNCE (both views), output KL (explicit scores detached), trajectory alignment.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..bm25 import bm25_top
from ..conversation import PromptFormat, encode_conversation, history_text, reply_closing_ids
from ..data import RetrievalData, load_data
from ..errors import DataFormatError
from ..extras import pip_line, require
from ..files import atomic_file, atomic_folder, check_output_folder, reading, recover, verify_folder
from ..training.losses import InfoNCE, ScoreDistillation, contrastive_batch
from ..training.schedule import cosine_warmup
from .config import DEFAULT_TARGETS, LatentConfig, LatentConfigError, check_k
from .encoder import LatentEncoder, decoder_of, left_pad, pool
from .losses import TrajectoryAlignment, boundary_steps

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SEGMENT_END = re.compile(r"\n\s*\n|(?<=[.!?])\s+")
LOSSES = ("latent", "explicit", "distill", "trajectory")


EXPLICIT_LAYOUTS = ("reply", "closed")


@dataclass
class LatentTrainConfig:
    """Everything that shapes a latent adapter and its training (defaults from LaSER, arXiv:2603.01425)."""

    k: int = 3
    temperature: float = 1.0  # soft-token softmax temperature
    lora_r: int = 64
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = ",".join(DEFAULT_TARGETS)
    lora_layers: int = 0  # adapt only the top N decoder layers; 0: all (top 8 kept latent tokens from learning)
    max_tokens: int = 512  # conversation window (latent and explicit view)
    document_max_tokens: int = 256
    max_rationale_tokens: int = 256  # the explicit view's rationale window; longer rationales are cut
    explicit_layout: str = "closed"  # "closed": embed at the next generation prompt; "reply": at the rationale
    latent_weight: float = 1.0  # InfoNCE of the latent view
    explicit_weight: float = 1.0  # InfoNCE of the explicit view
    distill_weight: float = 10.0  # output-level KL(explicit || latent)
    trajectory_weight: float = 0.1
    contrastive_temperature: float = 0.02
    distill_temperature: float = 0.02
    trajectory_temperature: float = 0.05
    batch_size: int = 4  # queries per micro-batch (documents: 2 per query)
    grad_accum: int = 2
    epochs: int = 1
    lr: float = 1e-4
    warmup: float = 0.1  # fraction of optimizer steps
    weight_decay: float = 0.0
    clip: float = 1.0
    hard_pool: int = 20  # one hard negative per query, drawn from its top BM25 (history) non-positives
    checkpoint_every: int = 10  # optimizer steps
    seed: int = 0

    def __post_init__(self) -> None:
        check_k(self.k)
        if self.batch_size < 1 or self.grad_accum < 1:
            raise LatentConfigError("batch_size and grad_accum must be at least 1.")
        if self.explicit_layout not in EXPLICIT_LAYOUTS:
            raise LatentConfigError(
                f"explicit_layout={self.explicit_layout!r}; use one of {', '.join(EXPLICIT_LAYOUTS)}."
            )

    @property
    def explicit_view(self) -> bool:
        """The explicit view runs when any loss reads it (off: 'without the explicit view')."""
        return self.explicit_weight > 0 or self.distill_weight > 0 or self.trajectory_weight > 0

    def latent_config(self, prompt_format: PromptFormat) -> LatentConfig:
        """The LatentConfig an adapter trained with these settings records."""
        return LatentConfig(
            k=self.k,
            temperature=self.temperature,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=[t.strip() for t in self.target_modules.split(",") if t.strip()],
            lora_layers=self.lora_layers or None,
            prompt_format=prompt_format.to_dict(),
            document_max_tokens=self.document_max_tokens,
        )


@dataclass
class Example:
    """One training query: its conversation, rationale text, positive and hard-negative corpus indices."""

    qid: str
    messages: list[dict]
    rationale: str
    positives: list[int]
    hard: list[int] = field(default_factory=list)


def rationale_text(query: dict) -> str:
    """The default rationale of a data query: its evidence span (``rationale``) and ``answer``, as two segments."""
    parts = []
    if str(query.get("rationale") or "").strip():
        parts.append(f"Evidence: {query['rationale'].strip()}")
    if str(query.get("answer") or "").strip():
        parts.append(f"Answer: {query['answer'].strip()}")
    return "\n\n".join(parts)


def build_examples(
    data: RetrievalData,
    rationales: dict[str, str] | None = None,
    max_queries: int | None = None,
    hard_pool: int = 20,
    seed: int = 0,
) -> list[Example]:
    """Training examples of ``data`` (a random sample of ``max_queries`` across the file), hard negatives from BM25.

    Queries whose judged passages are all missing from the corpus are skipped (with a warning); ``rationales``
    (query id -> text, e.g. from ``native-retriever latent-rationales``) replaces the data's own fields.
    """
    queries = list(data.queries)
    if max_queries is not None and max_queries < len(queries):
        queries = random.Random(seed).sample(queries, max_queries)
    index = {doc_id: i for i, doc_id in enumerate(data.doc_ids)}
    texts = [history_text(q["messages"]) for q in queries]
    top, _ = bm25_top([d["text"] for d in data.corpus], texts, hard_pool + 10)
    examples, skipped = [], []
    for row, query in enumerate(queries):
        positives = [index[d] for d in data.qrels.get(query["id"], {}) if d in index]
        if not positives:
            skipped.append(query["id"])
            continue
        hard = [int(c) for c in top[row] if int(c) not in positives][:hard_pool]
        text = rationales.get(query["id"], "") if rationales is not None else rationale_text(query)
        examples.append(Example(query["id"], query["messages"], text, positives, hard))
    if skipped:
        warnings.warn(
            f"{len(skipped)} queries have no judged passage in the corpus and were skipped: {skipped[:5]}", stacklevel=2
        )
    return examples


def make_batch(examples: list[Example], rng: random.Random) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Batch documents (each query's positive and one hard negative, deduplicated), labels and the ignore mask.

    A query without a positive raises DataFormatError naming it: it cannot be scored by InfoNCE.
    """
    chosen, negatives = [], []
    for example in examples:
        if not example.positives:
            raise DataFormatError(
                f"Query {example.qid!r} has no positive passage; every training query needs at least one judged "
                "passage in the corpus (fix its qrels, or drop it; build_examples skips such queries)."
            )
        chosen.append(rng.choice(example.positives))
        if example.hard:
            negatives.append(rng.choice(example.hard))
    return contrastive_batch([example.positives for example in examples], chosen, negatives)


class ExplicitInputs:
    """Token ids of the explicit view (conversation, then the rationale as the start of the reply) and its
    segment-boundary positions. Layout ``closed``: the reply is closed and a new generation prompt follows, so the
    final token (the embedding) is the same kind of state as the latent view's first step."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_format: PromptFormat,
        max_rationale_tokens: int,
        layout: str = "reply",
    ):
        self.tokenizer, self.prompt_format, self.limit = tokenizer, prompt_format, max_rationale_tokens
        self.closing = reply_closing_ids(tokenizer) if layout == "closed" else []
        self.cut = 0  # rationales cut to fit the window so far

    def __call__(self, example: Example) -> tuple[list[int], list[int]]:
        """Token ids of the explicit view for `example`: the prompt and the rationale, cut to the window."""
        prompt = encode_conversation(self.tokenizer, example.messages, self.prompt_format).input_ids
        text = example.rationale.strip()
        if not text:
            return prompt, [len(prompt) - 1]
        encoding = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
        )
        ids, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
        if len(ids) > self.limit:
            if self.cut == 0:
                warnings.warn(
                    f"A rationale of {len(ids)} tokens is longer than the explicit view's window for rationales "
                    f"(max_rationale_tokens={self.limit}); it is cut to its first {self.limit} tokens (counted in "
                    "the training log as rationales_cut; raise --max-rationale-tokens to keep more).",
                    stacklevel=2,
                )
            self.cut += 1
            ids, offsets = ids[: self.limit], offsets[: self.limit]
        ends = [m.start() for m in SEGMENT_END.finditer(text)] + [len(text)]
        boundaries = []
        for end in ends:
            inside = [i for i, (a, _b) in enumerate(offsets) if a < end]
            if inside and (not boundaries or inside[-1] > boundaries[-1]):
                boundaries.append(inside[-1])
        if not boundaries or boundaries[-1] != len(ids) - 1:
            boundaries.append(len(ids) - 1)
        return prompt + ids + self.closing, [len(prompt) + b for b in boundaries if b < len(ids)]


def explicit_view(encoder: LatentEncoder, inputs: list[tuple[list[int], list[int]]], k: int):
    """Explicit-view embeddings (B, H) at the final token and boundary states (B, K, H), unit vectors."""
    device = next(encoder.model.parameters()).device
    sequences = [ids for ids, _ in inputs]
    input_ids, mask = left_pad(sequences, encoder.pad_id, device)
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    hidden = decoder_of(encoder.model)(
        input_ids=input_ids, attention_mask=mask, position_ids=position
    ).last_hidden_state
    length = input_ids.shape[1]
    picked = []
    for row, (ids, bounds) in enumerate(inputs):
        offset = length - len(ids)
        steps = [bounds[s] for s in boundary_steps(len(bounds), k)]
        picked.append(hidden[row, [offset + s for s in steps]])
    return F.normalize(hidden[:, -1].float(), dim=-1), F.normalize(torch.stack(picked).float(), dim=-1)


def batch_losses(
    encoder: LatentEncoder,
    batch: list[Example],
    docs: list[list[int]],
    labels: torch.Tensor,
    ignore: torch.Tensor,
    config: LatentTrainConfig,
    explicit: ExplicitInputs,
) -> dict[str, torch.Tensor]:
    """The weighted-to-be loss terms of one micro-batch (only those with a non-zero weight are computed)."""
    device = next(encoder.model.parameters()).device
    labels, ignore = labels.to(device), ignore.to(device)
    query_states = encoder.states([encoder.conversation_ids(e.messages) for e in batch], config.k)
    latent = pool(query_states)
    doc_vectors = pool(encoder.states(docs, config.k))
    losses = {"latent": InfoNCE(config.contrastive_temperature)(latent, doc_vectors, labels, ignore)}
    if config.explicit_view:
        final, segments = explicit_view(encoder, [explicit(e) for e in batch], config.k)
        if config.explicit_weight > 0:
            losses["explicit"] = InfoNCE(config.contrastive_temperature)(final, doc_vectors, labels, ignore)
        if config.distill_weight > 0:
            losses["distill"] = ScoreDistillation(config.distill_temperature)(final, latent, doc_vectors, ignore)
        if config.trajectory_weight > 0:
            steps = F.normalize(query_states.float(), dim=-1)
            losses["trajectory"] = TrajectoryAlignment(config.trajectory_temperature)(
                segments, steps, doc_vectors, ignore
            )
    return losses


def _weights(config: LatentTrainConfig) -> dict[str, float]:
    return {
        "latent": config.latent_weight,
        "explicit": config.explicit_weight,
        "distill": config.distill_weight,
        "trajectory": config.trajectory_weight,
    }


# -- checkpoints (safetensors + JSON only) ---------------------------------------------------------------------
def save_checkpoint(folder: Path, encoder: LatentEncoder, optimizer, schedule, state: dict) -> None:
    """Adapter weights, optimizer moments and the loop's position, so training resumes where it stopped."""
    from peft import get_peft_model_state_dict

    adapter = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(encoder.peft_model).items()}
    moments = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            moments[f"{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {**state, "param_groups": optimizer.state_dict()["param_groups"], "schedule": schedule.state_dict()}
    with atomic_folder(folder, "latent-checkpoint") as tmp:  # the three files are replaced together
        save_file(adapter, str(tmp / "adapter.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, default=str))


def load_checkpoint(folder: Path, encoder: LatentEncoder, optimizer, schedule) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the loop state."""
    from peft import set_peft_model_state_dict

    with reading(folder, "latent-checkpoint") as folder:  # whole: a save into the same place waits for this load
        verify_folder(folder, "latent-checkpoint")
        meta = json.loads((folder / "state.json").read_text())
        adapter = load_file(str(folder / "adapter.safetensors"))
        moments = load_file(str(folder / "optimizer.safetensors"))
    set_peft_model_state_dict(encoder.peft_model, adapter)
    state: dict = {}
    for key, value in moments.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = meta.pop("param_groups")
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    schedule.load_state_dict(meta.pop("schedule"))
    return meta


def plot_losses(history: list[dict], path: Path) -> None:
    """Loss curves (each term, unweighted, and the weighted total) per optimizer step, as a PNG."""
    try:
        import matplotlib
    except ImportError:  # the log (training_log.json) is written anyway
        warnings.warn(f"matplotlib is missing, so no loss_curve.png: {pip_line('train')}", stacklevel=2)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    for name in ("total", *LOSSES):
        values = [h.get(f"loss_{name}") for h in history]
        if any(v is not None for v in values):
            ax.plot(steps, values, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("latent-view training")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def train_latent(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    corpus: list[str],
    config: LatentTrainConfig,
    output: str | Path,
    *,
    resume: bool = False,
    data_info: dict | None = None,
) -> LatentEncoder:
    """Train a fresh adapter on ``model`` (LoRA injected in place) and save it to ``output``; returns the encoder.

    ``corpus`` holds the passage texts the examples' indices point to. Checkpoints go to ``output/checkpoint``
    every ``checkpoint_every`` optimizer steps; ``resume=True`` continues from there.
    """
    require("latent", "peft", what="train_latent")
    if not examples:
        raise DataFormatError("No training examples: every query lacked a judged passage, or the data is empty.")
    output = check_output_folder(output, "latent-adapter")  # before any work: never over a user's folder
    prompt_format = PromptFormat(max_tokens=config.max_tokens)
    encoder = LatentEncoder.create(model, tokenizer, config.latent_config(prompt_format), seed=config.seed)
    explicit = ExplicitInputs(tokenizer, prompt_format, config.max_rationale_tokens, config.explicit_layout)
    doc_ids: dict[int, list[int]] = {}
    micro_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_micro = config.epochs * micro_per_epoch
    total_steps = math.ceil(total_micro / config.grad_accum)
    weights = _weights(config)
    was_training = model.training
    with encoder.adapter_active():
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        schedule = cosine_warmup(optimizer, total_steps, config.warmup)
        state = {"micro": 0, "step": 0, "history": [], "seconds": 0.0, "rationales_cut": 0}
        checkpoint = recover(output / "checkpoint", "latent-checkpoint")
        if resume and (checkpoint / "state.json").is_file():
            state = load_checkpoint(checkpoint, encoder, optimizer, schedule)
            explicit.cut = state.get("rationales_cut", 0)
        model.train()
        started = time.time() - state["seconds"]
        totals: dict[str, float] = {}
        bar = tqdm(total=total_micro, initial=state["micro"], desc="train-latent", unit="batch")
        try:
            while state["micro"] < total_micro:
                epoch, position = divmod(state["micro"], micro_per_epoch)
                order = list(range(len(examples)))
                random.Random(config.seed + epoch).shuffle(order)
                rows = order[position * config.batch_size : (position + 1) * config.batch_size]
                batch = [examples[i] for i in rows]
                rng = random.Random(config.seed * 1_000_003 + state["micro"])
                candidates, labels, ignore = make_batch(batch, rng)
                for c in candidates:
                    if c not in doc_ids:
                        doc_ids[c] = encoder.document_ids(corpus[c])
                losses = batch_losses(
                    encoder, batch, [doc_ids[c] for c in candidates], labels, ignore, config, explicit
                )
                loss = sum(weights[name] * value for name, value in losses.items())
                (loss / config.grad_accum).backward()
                for name, value in {**losses, "total": loss}.items():
                    totals[name] = totals.get(name, 0.0) + float(value.detach()) / config.grad_accum
                state["micro"] += 1
                bar.update(1)
                if state["micro"] % config.grad_accum and state["micro"] < total_micro:
                    continue
                torch.nn.utils.clip_grad_norm_(params, config.clip)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                state["step"] += 1
                state["seconds"] = round(time.time() - started, 1)
                state["rationales_cut"] = explicit.cut
                record = {"step": state["step"], **{f"loss_{k}": round(v, 4) for k, v in totals.items()}}
                state["history"].append(record | {"seconds": state["seconds"]})
                bar.set_postfix(loss=f"{totals['total']:.3f}")
                totals = {}
                if state["step"] % config.checkpoint_every == 0 and state["micro"] < total_micro:
                    save_checkpoint(checkpoint, encoder, optimizer, schedule, state)
                    with atomic_file(output / "loss_curve.png") as curve:
                        plot_losses(state["history"], curve)
        finally:
            bar.close()
            model.train(was_training)
    encoder.config.training = {
        "config": asdict(config),
        "data": data_info or {},
        "examples": len(examples),
        "optimizer_steps": state["step"],
        "seconds": state["seconds"],
        "rationales_cut": state["rationales_cut"],
    }
    encoder.config.metrics = {"history": state["history"]}

    def write_extra(tmp: Path) -> None:
        (tmp / "training_log.json").write_text(json.dumps(state["history"], indent=1) + "\n")
        plot_losses(state["history"], tmp / "loss_curve.png")

    encoder.save_pretrained(output, write_extra)  # replaces the checkpoint folder too
    return encoder


def read_rationales(path: str | Path) -> dict[str, str]:
    """A rationale cache (JSONL of ``{"id", "rationale"}``) as query id -> text."""
    out = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                out[str(row["id"])] = str(row["rationale"])
            except (json.JSONDecodeError, KeyError) as exc:
                raise DataFormatError(f"{path}:{number}: expected {{'id', 'rationale'}} JSON ({exc}).") from exc
    return out


def train_latent_from_folder(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    config: LatentTrainConfig | None = None,
    *,
    llm: str | os.PathLike | None = None,
    device: str | None = None,
    rationales: str | os.PathLike | None = None,
    max_train_queries: int | None = None,
    resume: bool = False,
) -> LatentEncoder:
    """Train a latent-view adapter on one data folder and save it to ``output``: what ``train-latent`` runs.

    ``rationales``: a JSONL cache from ``write_rationales`` (default: the data's own ``rationale`` and ``answer``
    fields). ``max_train_queries``: a random sample of N judged queries, seeded by ``config.seed``. ``output`` is
    checked before any data or model loads; ``resume=True`` continues from ``output/checkpoint``. The training
    facts (steps, seconds, rationales cut) are in ``encoder.config.training``.
    """
    from ..models import load_llm

    config = config or LatentTrainConfig()
    check_output_folder(output, "latent-adapter")  # before the data and the model load
    data = load_data(folder)
    cache = read_rationales(rationales) if rationales else None
    examples = build_examples(data, cache, max_train_queries, config.hard_pool, config.seed)
    model, tokenizer = load_llm(llm, device=device)
    info = {"name": data.name, "queries": len(examples), "passages": len(data.corpus), "rationales": rationales}
    corpus = [d["text"] for d in data.corpus]
    return train_latent(model, tokenizer, examples, corpus, config, output, resume=resume, data_info=info)


RATIONALE_PROMPT = (
    "Read this conversation and explain, in two or three short sentences, what its last question is really asking "
    "about (resolve pronouns with names) and what information a passage must contain to answer it.\n\n"
    "{history}\n\nLast question: {question}"
)


def earlier_turns(messages: list[dict]) -> str:
    """The conversation before its current question, one message a line (the rationale prompt's context)."""
    lines = [f"{m['role']}: {m['content']}" for m in messages[:-1] if m["role"] != "system"]
    return "\n".join(lines) or "(no earlier turns)"


def write_rationales(
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    llm: str | os.PathLike | None = None,
    device: str | None = None,
    max_queries: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> int:
    """Write (and extend) a JSONL cache of rationales by a local instruct LLM, one ``{"id", "rationale"}`` per query:
    what ``latent-rationales`` runs; queries the file holds are skipped. Returns how many rationales it holds.

    ``data``: a data folder, whose first ``max_queries`` judged queries get rationales. ``output`` is checked before
    the data and the model load; each batch is flushed, so an interrupted run keeps what it wrote.
    """
    from ..checks import check_output_path
    from ..generation import generate_texts
    from ..models import load_llm

    output = check_output_path(output, "output", kind="file")  # before the data and the model load
    loaded = load_data(data)
    done = set()
    if output.is_file():
        done = {json.loads(line)["id"] for line in output.read_text().splitlines() if line.strip()}
    queries = [q for q in loaded.queries[:max_queries] if q["id"] not in done]
    model, tokenizer = load_llm(llm, device=device)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "a", encoding="utf-8") as handle:
        for start in tqdm(range(0, len(queries), batch_size), desc="Writing rationales"):
            chunk = queries[start : start + batch_size]
            chats = [
                [
                    {
                        "role": "user",
                        "content": RATIONALE_PROMPT.format(
                            history=earlier_turns(q["messages"]), question=q["question"]
                        ),
                    }
                ]
                for q in chunk
            ]
            for query, text in zip(chunk, generate_texts(model, tokenizer, chats, max_new_tokens)):
                handle.write(json.dumps({"id": query["id"], "rationale": text}) + "\n")
            handle.flush()
    return len(done) + len(queries)
