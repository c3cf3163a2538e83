"""Train a projection head from cached hidden states and teacher vectors (one readable loop)."""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..conversation import PromptFormat
from ..data import RetrievalData
from ..errors import NativeRetrieverError
from ..evaluation import retrieval_metrics, top_k_run
from ..extras import require
from ..heads import HeadConfig, ProjectionHead
from ..states import pad_states
from .cache import HiddenStateCache, concat_caches
from .distributed import Ranks
from .losses import AlignmentLoss, InfoNCE, ScoreDistillation, contrastive_batch
from .schedule import cosine_warmup


@dataclass
class TrainConfig:
    """Everything that shapes a head and its training; saved in the head's config.json."""

    architecture: str = "transformer"
    input_mode: str = "context"
    span: str = "all"
    layers: list[int] = field(default_factory=lambda: [-1])
    max_input_tokens: int = 256
    pool_window: int = 1
    d_model: int = 256
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    target: str = "history"  # alignment target: history, history-N or question
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of steps
    clip: float = 1.0
    align_weight: float = 1.0
    contrastive_weight: float = 1.0
    rank_weight: float = 1.0
    contrastive_temperature: float = 0.05
    rank_temperature: float = 0.05
    hard_negatives: int = 4  # sampled per query per step from the teacher's top ``hard_pool`` non-positives
    hard_pool: int = 30
    rank_top_k: int = 32
    patience: int = 4  # epochs without a better dev Recall@10 (ties: MRR@10) before stopping
    seed: int = 0


@dataclass
class Split:
    """One data set ready for training: cached states, teacher vectors, positives and teacher rankings."""

    data: RetrievalData
    states: HiddenStateCache
    corpus: np.ndarray  # (N, D) teacher document vectors
    targets: np.ndarray  # (n, D) teacher vectors of the alignment targets

    def split_off(self, conversations: int) -> tuple[Split, Split]:
        """(rest, held out): the last ``conversations`` conversations (by ``story_id``) held out for model selection.

        Turns of one conversation share passages, so they stay on one side of the split.
        """
        by_id = {q["id"]: q for q in self.data.queries}
        groups = [by_id[qid].get("story_id", qid) for qid in self.states.ids]
        order = list(dict.fromkeys(reversed(groups)))  # conversations, last first
        if not 0 < conversations < len(order):
            raise ValueError(f"Cannot hold out {conversations} of {len(order)} conversations of {self.data.name}.")
        held = set(order[:conversations])
        return self._subset([i for i, g in enumerate(groups) if g not in held]), self._subset(
            [i for i, g in enumerate(groups) if g in held]
        )

    def _subset(self, rows: list[int]) -> Split:
        states = self.states.select(rows)
        keep = set(states.ids)
        queries = [q for q in self.data.queries if q["id"] in keep]
        data = RetrievalData(self.data.name, self.data.corpus, queries, {q: self.data.qrels[q] for q in keep})
        return Split(data, states, self.corpus, self.targets[rows])

    def positives(self) -> list[list[int]]:
        """For each query, the corpus rows of its judged positive documents."""
        index = {doc_id: i for i, doc_id in enumerate(self.data.doc_ids)}
        return [[index[d] for d in self.data.qrels[qid] if d in index] for qid in self.states.ids]


def check_cache(split: Split, config: TrainConfig) -> None:
    """Refuse a split whose hidden-state cache holds another window or other layers than ``config``'s head reads."""
    window = {"span": config.span, "max_input_tokens": config.max_input_tokens}
    cached = split.states.spec
    if cached.get("window") != window or cached.get("layers") != list(config.layers):
        raise NativeRetrieverError(
            f"The hidden-state cache of {split.data.name} holds window {cached.get('window')} of layers "
            f"{cached.get('layers')}, but this head reads window {window} of layers {list(config.layers)}; cache "
            "the states for this head (cache_hidden_states with its window and layers)."
        )


def encode_split(head: ProjectionHead, views: Sequence[torch.Tensor], batch_size: int = 128) -> np.ndarray:
    """Head vectors of cached examples (evaluation mode)."""
    head.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(views), batch_size):
            batch, mask = pad_states([views[i].float() for i in range(start, min(start + batch_size, len(views)))])
            out.append(head(batch, mask).numpy())
    return np.concatenate(out)


def dev_metrics(head: ProjectionHead, dev: Split) -> dict[str, float]:
    """Retrieval metrics of `head` on the dev split (exact search over the dev corpus)."""
    run = top_k_run(dev.states.ids, dev.data.doc_ids, encode_split(head, dev.states), dev.corpus)
    return retrieval_metrics({qid: dev.data.qrels[qid] for qid in dev.states.ids}, run)


def train_head(
    train: list[Split],
    dev: Split,
    config: TrainConfig,
    base: HeadConfig,
    log_path: Path | None = None,
    init: ProjectionHead | None = None,
    ranks: Ranks | None = None,
) -> ProjectionHead:
    """Train a head on ``train`` with early stopping on ``dev`` Recall@10 (ties broken by MRR@10); returns the best
    head. ``init``: start from a copy of this head (fine-tuning; ``config`` must describe its architecture:
    :func:`config_for_head`).

    Under several processes (``ranks``) the head is wrapped in ``DistributedDataParallel``: every rank walks the
    same shuffled batches and takes its share of each (rows ``rank::world``), gradients are averaged across ranks,
    and every rank scores the dev set with the same weights, so all stop at the same epoch with the same head."""
    ranks = ranks or Ranks()
    require("train", "ranx", what="Head training (its dev metrics)")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    for split in [*train, dev]:
        check_cache(split, config)
    # One global document matrix; each query's candidates come from its own split's corpus.
    docs = torch.from_numpy(np.concatenate([s.corpus for s in train]))
    views = concat_caches([s.states for s in train])  # memory-mapped: each batch reads its rows
    targets, positives, hard, rank_top = [], [], [], []
    offset = 0
    for split in train:
        targets.append(torch.from_numpy(split.targets))
        scores = torch.from_numpy(split.targets) @ torch.from_numpy(split.corpus).T
        top = scores.topk(min(config.hard_pool + 10, scores.shape[1]), dim=1).indices
        for row, pos in enumerate(split.positives()):
            positives.append([p + offset for p in pos])
            hard.append([int(c) + offset for c in top[row] if int(c) not in pos][: config.hard_pool])
            rank_top.append(top[row, : config.rank_top_k] + offset)
        offset += split.corpus.shape[0]
    targets = torch.cat(targets)
    rank_top = torch.stack(rank_top)
    keep = [i for i, p in enumerate(positives) if p]

    head = copy.deepcopy(init) if init is not None else ProjectionHead(base)
    model = head
    if ranks.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(head)
    shuffler = random if ranks.world == 1 else random.Random(config.seed)  # the same batches on every rank
    align, contrast = AlignmentLoss(), InfoNCE(config.contrastive_temperature)
    rank = ScoreDistillation(config.rank_temperature)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(keep) / config.batch_size)
    schedule = cosine_warmup(optimizer, steps, config.warmup)
    best, best_state, history, stale = (-1.0, -1.0), None, [], 0
    for epoch in range(config.epochs):
        head.train()
        shuffler.shuffle(keep)
        started, totals = time.time(), {"align": 0.0, "contrastive": 0.0, "rank": 0.0}
        batches = tqdm(
            range(0, len(keep), config.batch_size), desc=f"epoch {epoch + 1}", leave=False, disable=not ranks.main
        )
        for start in batches:
            rows = keep[start : start + config.batch_size]
            if ranks.world > 1:
                if len(rows) < ranks.world:
                    continue  # a last batch too small to give every rank a row
                rows = rows[ranks.rank :: ranks.world]
            batch, mask = pad_states([views[i].float() for i in rows])
            student = model(batch, mask)
            target = targets[rows]
            chosen = [random.choice(positives[i]) for i in rows]
            negatives = [n for i in rows for n in random.sample(hard[i], min(config.hard_negatives, len(hard[i])))]
            candidates, labels, ignore = contrastive_batch([positives[i] for i in rows], chosen, negatives)
            losses = {
                "align": align(student, target),
                "contrastive": contrast(student, docs[candidates], labels, ignore),
                "rank": rank(target, student, docs[rank_top[rows]]),
            }
            weights = {
                "align": config.align_weight,
                "contrastive": config.contrastive_weight,
                "rank": config.rank_weight,
            }
            loss = sum(weights[name] * value for name, value in losses.items() if weights[name] > 0)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), config.clip)
            optimizer.step()
            schedule.step()
            for name, value in losses.items():
                totals[name] += float(value.detach()) * len(rows) / len(keep)
        metrics = dev_metrics(head, dev)
        history.append(
            {
                "epoch": epoch + 1,
                **{f"loss_{k}": round(v, 4) for k, v in totals.items()},
                **metrics,
                "seconds": round(time.time() - started, 1),
            }
        )
        if ranks.main:
            tqdm.write(json.dumps(history[-1]))
        # dev Recall@10 picks the epoch; MRR@10 breaks its ties (a small dev set ties often on recall)
        score = (ranks.all_agree(metrics["recall@10"]), ranks.all_agree(metrics["mrr@10"]))
        if score > best:
            best, best_state, stale = score, copy.deepcopy(head.state_dict()), 0
            best_metrics = metrics
        else:
            stale += 1
            if stale >= config.patience:
                break
    head.load_state_dict(best_state)
    head.config.metrics = {"dev": {"data": dev.data.name, **best_metrics}, "history": history}
    head.config.training = {
        "config": asdict(config),
        "processes": ranks.world,
        "data": [
            {
                "name": s.data.name,
                "queries": len(s.states.ids),
                "passages": len(s.data.corpus),
                "cached_bytes": s.states.nbytes,
            }
            for s in train
        ],
    }
    if log_path is not None and ranks.main:
        log_path.write_text(json.dumps(history, indent=2))
    return head.eval()


#: The TrainConfig fields a head's config records (they describe the head, not its optimisation).
ARCHITECTURE_FIELDS = (
    "architecture",
    "input_mode",
    "span",
    "layers",
    "max_input_tokens",
    "pool_window",
    "d_model",
    "num_layers",
    "num_heads",
    "dropout",
)


def config_for_head(config: TrainConfig, head: ProjectionHead) -> TrainConfig:
    """``config`` with the architecture of ``head`` (to fine-tune it), its optimisation settings kept."""
    return replace(config, **{name: copy.deepcopy(getattr(head.config, name)) for name in ARCHITECTURE_FIELDS})


def head_config(config: TrainConfig, llm: dict, teacher: dict, prompt_format: PromptFormat) -> HeadConfig:
    """The HeadConfig for a new head trained with ``config`` on this LLM and teacher."""
    return HeadConfig(
        hidden_size=llm["hidden_size"],
        output_dim=teacher["dim"],
        **{name: copy.deepcopy(getattr(config, name)) for name in ARCHITECTURE_FIELDS},
        llm=llm,
        teacher=teacher,
        prompt_format=prompt_format.to_dict(),
    )
