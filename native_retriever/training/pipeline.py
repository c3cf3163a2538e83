"""From data folders to a trained head: what ``native-retriever train-head`` runs, as one call for Python users."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..conversation import PromptFormat
from ..data import RetrievalData, load_corpus, load_data
from ..data import passage_queries as corpus_queries
from ..errors import InvalidArgumentError
from ..extras import require
from ..files import atomic_folder, check_output_folder
from ..heads import ProjectionHead
from .cache import cache_hidden_states, teacher_vectors
from .distributed import ranks as current_ranks
from .synthetic import SyntheticConfig, SyntheticCounts, filter_by_teacher, generate_conversations
from .trainer import Split, TrainConfig, config_for_head, head_config, train_head


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
    shard_size: int = 256,
) -> ProjectionHead:
    """Cache hidden states and teacher vectors of data folders, train a head with early stopping; return the best.

    ``train``: one or more data folders (docs/data-format.md). Model selection runs on ``dev`` (a data folder) or,
    with ``dev_holdout=N``, on the last N conversations (by ``story_id``) of the first training folder.
    ``max_train_queries``: the first N judged queries of each folder (one N for all, or one per folder).
    ``passage_queries``: also train on the first N passages of each training corpus as one-message
    conversations (0: none), leaving out the dev set's relevant passages so model selection stays fair.
    ``max_tokens``: the conversation window. ``shard_size``: conversations per hidden-state cache shard (the unit of
    resuming, and of work split between processes under torchrun / accelerate launch). ``cache``: where states and
    vectors are cached (default:
    ``$NATIVE_RETRIEVER_HOME/training``). With ``output`` the head is saved there (with ``training_log.json``);
    the folder is checked before any data or model loads. The dev metrics are in ``head.config.metrics["dev"]``,
    the epochs in ``head.config.metrics["history"]``.
    """
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
    # every data file is read before any model loads
    train_data = [load_data(folder, max_queries=n) for folder, n in zip(folders, limits)]
    dev_data = load_data(dev, max_queries=max_dev_queries, require_judged=True) if dev is not None else None
    _check_holdout(train_data[0], dev_holdout, folders[0])
    models = Models.load(llm, teacher, device)
    return train_head_from_data(
        train_data,
        models,
        dev_data,
        dev_holdout=dev_holdout,
        output=output,
        config=config,
        cache=cache,
        passage_queries=sizes,
        max_tokens=max_tokens,
        shard_size=shard_size,
    )


def _check_holdout(data: RetrievalData, dev_holdout: int | None, where: str) -> None:
    if dev_holdout is None:
        return
    stories = len({q.get("story_id", q["id"]) for q in data.queries})
    if not 0 < dev_holdout < stories:
        raise InvalidArgumentError(
            f"dev_holdout (--dev-holdout) {dev_holdout}: the training queries of {where} hold {stories} "
            f"conversations (by story_id); hold out between 1 and {stories - 1}, or give a dev folder (--dev)."
        )


class Models:
    """The LLM (model, tokenizer) and the teacher a training run uses."""

    def __init__(self, model, tokenizer, teacher) -> None:
        self.model, self.tokenizer, self.teacher = model, tokenizer, teacher

    @classmethod
    def load(cls, llm=None, teacher=None, device: str | None = None) -> Models:
        """Load them offline (``load_llm``, ``Teacher.from_pretrained``)."""
        from ..models import load_llm
        from ..teacher import Teacher

        model, tokenizer = load_llm(llm, device=device)
        return cls(model, tokenizer, Teacher.from_pretrained(teacher, device=device))


def train_head_from_data(
    train_data: Sequence[RetrievalData],
    models: Models,
    dev_data: RetrievalData | None = None,
    *,
    dev_holdout: int | None = None,
    output: Path | None = None,
    config: TrainConfig | None = None,
    cache: str | os.PathLike | None = None,
    passage_queries: Sequence[int] | None = None,
    max_tokens: int = 512,
    init: ProjectionHead | None = None,
    shard_size: int = 256,
) -> ProjectionHead:
    """:func:`train_head_from_folders` on data already read (``passage_queries``: one N per training set).
    ``init``: fine-tune this head (its architecture and prompt format are kept) rather than train a new one."""
    from ..models import cache_dir, llm_info

    config = config or TrainConfig()
    ranks = current_ranks()
    fmt = PromptFormat(max_tokens=max_tokens)
    if init is not None:
        config = config_for_head(config, init)
        fmt = PromptFormat.from_dict(init.config.prompt_format)
    root = Path(cache or cache_dir() / "training")
    model, tokenizer, teacher = models.model, models.tokenizer, models.teacher

    def split(data: RetrievalData) -> Split:
        states = cache_hidden_states(
            model,
            tokenizer,
            data,
            root / "states",
            window=(config.span, config.max_input_tokens),
            layers=config.layers,
            prompt_format=fmt,
            shard_size=shard_size,
            ranks=ranks,
        )
        corpus, targets = teacher_vectors(teacher, data, root, config.target, ranks=ranks)
        return Split(data, states, corpus, targets)

    splits = [split(data) for data in train_data]
    if dev_data is None:
        splits[0], held_out = splits[0].split_off(dev_holdout)
    else:
        held_out = split(dev_data)
    # The dev set's relevant passages never become training text, so model selection stays fair.
    held = frozenset(doc for docs in held_out.data.qrels.values() for doc in docs)
    sizes = list(passage_queries or [0] * len(splits))
    passages = [corpus_queries(s.data, tokenizer, n, exclude=held) for s, n in zip(splits, sizes) if n > 0]
    splits += [split(p) for p in passages if p.queries]  # a corpus whose first N passages are dev positives adds none
    base = head_config(config, llm_info(model), teacher.info, fmt)
    head = train_head(splits, held_out, config, base, init=init, ranks=ranks)
    if output is not None and ranks.main:  # the best head, written once
        save_head(head, output)
    ranks.barrier()
    return head


def save_head(head: ProjectionHead, output: str | os.PathLike) -> None:
    """Save a trained head with its ``training_log.json`` (the epochs)."""
    history = json.dumps(head.config.metrics["history"], indent=2)
    head.save_pretrained(output, extra_files={"training_log.json": history})


def corpus_passages(corpus: str | os.PathLike, max_passages: int | None = None) -> tuple[str, list[dict]]:
    """(name, passages) of ``corpus``, a folder of text / Markdown files or a data folder's corpus
    (``data.load_corpus``), its first ``max_passages`` (default all); an empty or unreadable folder raises."""
    return Path(os.path.abspath(corpus)).name or "corpus", load_corpus(corpus)[:max_passages]


def synthetic_data(
    name: str,
    passages: Sequence[dict],
    models: Models,
    *,
    config: SyntheticConfig | None = None,
    cache: str | os.PathLike | None = None,
) -> tuple[RetrievalData, SyntheticCounts]:
    """Training conversations about ``passages`` (of the corpus ``name``: :func:`corpus_passages`) written by
    ``models``' LLM and checked by its teacher (:mod:`native_retriever.training.synthetic`); generation is cached
    under ``cache`` (default ``$NATIVE_RETRIEVER_HOME/training``) and resumes there."""
    from ..models import cache_dir, llm_name

    config = config or SyntheticConfig()
    root = Path(cache or cache_dir() / "training")
    cache_file = root / "synthetic" / f"{name}-{config.key(llm_name(models.model))}.jsonl"
    conversations, counts = generate_conversations(
        models.model, models.tokenizer, passages, cache_file, config, ranks=current_ranks()
    )
    data = filter_by_teacher(models.teacher, passages, conversations, counts, config.check_k, f"{name}-synthetic")
    return data, counts


def _initial_head(init: ProjectionHead | str | os.PathLike | bool | None, models: Models) -> ProjectionHead | None:
    """The head to fine-tune: ``init`` itself, loaded from its folder, or (True) the shipped one for the LLM."""
    from ..errors import NoShippedHeadError
    from ..heads import shipped_head_for
    from ..models import llm_info

    if init is None or init is False:
        return None
    llm = llm_info(models.model)
    if init is True:
        try:
            init = shipped_head_for(llm)
        except NoShippedHeadError:
            return None  # an LLM with no shipped head: a new head
    head = init if isinstance(init, ProjectionHead) else ProjectionHead.from_pretrained(init)
    head.check_compatible(llm, models.teacher.info)  # a head for another LLM or teacher
    return head


def write_data_folder(data: RetrievalData, folder: str | os.PathLike) -> Path:
    """Save ``data`` as a data folder (docs/data-format.md: ``corpus.jsonl.gz``, ``queries.jsonl.gz``,
    ``qrels.tsv``), crash-safe; returns the folder."""
    with atomic_folder(folder, "data-folder") as tmp:
        for stem, records in (("corpus", data.corpus), ("queries", data.queries)):
            with gzip.open(tmp / f"{stem}.jsonl.gz", "wt", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        lines = [f"{qid}\t0\t{doc}\t{rel}\n" for qid, docs in data.qrels.items() for doc, rel in docs.items()]
        (tmp / "qrels.tsv").write_text("".join(lines), encoding="utf-8")
    return Path(folder)


def train_head_from_corpus(
    corpus: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    config: TrainConfig | None = None,
    synthetic: SyntheticConfig | None = None,
    llm: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    device: str | None = None,
    cache: str | os.PathLike | None = None,
    max_passages: int | None = None,
    dev_fraction: float = 0.1,
    max_tokens: int = 512,
    init: ProjectionHead | str | os.PathLike | bool | None = True,
    shard_size: int = 256,
) -> tuple[ProjectionHead, SyntheticCounts]:
    """Train a head for a corpus alone: the LLM's own conversations about its passages (:func:`synthetic_data`)
    and the passages as one-message queries; the epoch is picked on the conversations of the last ``dev_fraction``
    of the passages (their passages are not trained on). ``init``: the head to adapt (True: the shipped head made
    for the LLM, when there is one; a head or its folder; False or None: a new head from ``config``). Returns the
    head and the generation's counts."""
    if not 0 < dev_fraction < 1:
        raise InvalidArgumentError(f"dev_fraction must be between 0 and 1, got {dev_fraction!r}.")
    require("train", "ranx", what="Head training")
    if output is not None:
        output = check_output_folder(output, "head")  # before any data or model loads
    name, passages = corpus_passages(corpus, max_passages)  # an empty or unreadable folder fails before models load
    models = Models.load(llm, teacher, device)
    start = _initial_head(init, models)
    data, counts = synthetic_data(name, passages, models, config=synthetic, cache=cache)
    stories = len({q["story_id"] for q in data.queries})
    if stories < 2:
        raise InvalidArgumentError(
            f"Only {stories} passage(s) kept a conversation after the teacher's check ({asdict(counts)}); a head "
            "needs at least two, one to train on and one to pick the epoch on: give more (or longer) passages."
        )
    holdout = min(stories - 1, max(1, round(dev_fraction * stories)))
    head = train_head_from_data(
        [data],
        models,
        dev_holdout=holdout,
        config=config,
        cache=cache,
        passage_queries=[len(data.corpus)],
        max_tokens=max_tokens,
        init=start,
        shard_size=shard_size,
    )
    head.config.metrics["synthetic"] = asdict(counts)
    if output is not None and current_ranks().main:
        save_head(head, output)
    return head, counts
