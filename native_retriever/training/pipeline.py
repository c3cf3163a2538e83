"""From data folders to a trained head: what ``native-retriever train-head`` runs, as one call for Python users."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..conversation import PromptFormat
from ..data import RetrievalData, load_data
from ..data import passage_queries as corpus_queries
from ..errors import InvalidArgumentError
from ..extras import require
from ..files import check_output_folder
from ..heads import ProjectionHead
from .cache import cache_hidden_states, teacher_vectors
from .trainer import Split, TrainConfig, head_config, train_head


def per_folder(value, folders: int, what: str) -> list:
    """``value`` (one value, or a sequence of one or ``folders`` values) as one value per training folder."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) not in (1, folders):
        raise InvalidArgumentError(f"{what} takes one number, or one per training folder ({folders}), got {values}.")
    return values * folders if len(values) == 1 else values


def train_head_from_folders(
    train: str | os.PathLike | Sequence[str | os.PathLike],
    dev: str | os.PathLike | None = None,
    *,
    dev_holdout: int | None = None,
    output: str | os.PathLike | None = None,
    config: TrainConfig | None = None,
    llm: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    device: str | None = None,
    cache: str | os.PathLike | None = None,
    max_train_queries: int | Sequence[int | None] | None = None,
    passage_queries: int | Sequence[int] | None = None,
    max_dev_queries: int | None = None,
    max_tokens: int = 512,
) -> ProjectionHead:
    """Cache hidden states and teacher vectors of data folders, train a head with early stopping; return the best.

    ``train``: one or more data folders (docs/data-format.md). Model selection runs on ``dev`` (a data folder) or,
    with ``dev_holdout=N``, on the last N conversations (by ``story_id``) of the first training folder.
    ``max_train_queries``: the first N judged queries of each folder (one N for all, or one per folder).
    ``passage_queries``: also train on the first N passages of each training corpus as one-message
    conversations (0: none), leaving out the dev set's relevant passages so model selection stays fair.
    ``max_tokens``: the conversation window. ``cache``: where states and vectors are cached (default:
    ``$NATIVE_RETRIEVER_HOME/training``). With ``output`` the head is saved there (with ``training_log.json``);
    the folder is checked before any data or model loads. The dev metrics are in ``head.config.metrics["dev"]``,
    the epochs in ``head.config.metrics["history"]``.
    """
    from ..models import cache_dir, llm_info, load_llm
    from ..teacher import Teacher

    folders = [train] if isinstance(train, str | os.PathLike) else list(train)
    if not folders:
        raise InvalidArgumentError("train_head_from_folders needs at least one training folder.")
    if (dev is None) == (dev_holdout is None):
        raise InvalidArgumentError(
            "Give exactly one of dev (a data folder) and dev_holdout (a number of conversations to hold out)."
        )
    require("train", "ranx", what="Head training")
    limits = per_folder(max_train_queries, len(folders), "max_train_queries")
    sizes = per_folder(passage_queries or 0, len(folders), "passage_queries")
    if output is not None:
        output = check_output_folder(output, "head")  # before any data or model loads
    config = config or TrainConfig()
    # every data file is read before any model loads
    train_data = [load_data(folder, max_queries=n) for folder, n in zip(folders, limits)]
    dev_data = load_data(dev, max_queries=max_dev_queries, require_judged=True) if dev is not None else None
    if dev_holdout is not None:
        stories = len({q.get("story_id", q["id"]) for q in train_data[0].queries})
        if not 0 < dev_holdout < stories:
            raise InvalidArgumentError(
                f"dev_holdout (--dev-holdout) {dev_holdout}: the training queries of {folders[0]} hold {stories} "
                f"conversations (by story_id); hold out between 1 and {stories - 1}, or give a dev folder (--dev)."
            )
    model, tokenizer = load_llm(llm, device=device)
    loaded_teacher = Teacher.from_pretrained(teacher, device=device)
    fmt = PromptFormat(max_tokens=max_tokens)
    root = Path(cache or cache_dir() / "training")

    def split(data: RetrievalData) -> Split:
        states = cache_hidden_states(model, tokenizer, data, root / "states", layers=config.layers, prompt_format=fmt)
        corpus, targets = teacher_vectors(loaded_teacher, data, root, config.target)
        return Split(data, states, corpus, targets)

    splits = [split(data) for data in train_data]
    if dev_data is None:
        splits[0], held_out = splits[0].split_off(dev_holdout)
    else:
        held_out = split(dev_data)
    # The dev set's relevant passages never become training text, so model selection stays fair.
    held = frozenset(doc for docs in held_out.data.qrels.values() for doc in docs)
    passages = [corpus_queries(s.data, tokenizer, n, exclude=held) for s, n in zip(splits, sizes) if n > 0]
    splits += [split(p) for p in passages if p.queries]  # a corpus whose first N passages are dev positives adds none
    base = head_config(config, llm_info(model), loaded_teacher.info, fmt)
    head = train_head(splits, held_out, config, base)
    if output is not None:
        history = json.dumps(head.config.metrics["history"], indent=2)
        head.save_pretrained(output, extra_files={"training_log.json": history})
    return head
