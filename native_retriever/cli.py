"""The ``native-retriever`` command: demo, index, search, chat, train-head, eval, compare."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from importlib.resources import files
from pathlib import Path

from .arguments import LLM_HELP, add_device, add_hybrid, at_least, hybrid_of, positive_int
from .documents import MIN_MAX_WORDS
from .extras import require


def _embedder(args):
    from .embedder import NativeEmbedder
    from .heads import ProjectionHead

    # a given head fails fast, before the LLM loads; without one, the shipped head made for the LLM is picked
    head = ProjectionHead.from_pretrained(args.head) if args.head else None
    return NativeEmbedder.from_pretrained(llm=args.llm, head=head, teacher=args.teacher, device=args.device)


def _open_index(path: str, embedder):
    from .index import VectorIndex

    index = VectorIndex.load(path)
    embedder.head.check_compatible(teacher=index.info.get("teacher"))
    return index


def _show_hits(hits, width: int = 100) -> None:
    for rank, hit in enumerate(hits, 1):
        title = hit.metadata.get("title") or hit.id
        text = " ".join(hit.text.split())
        print(f"    {rank}. [{hit.score:.3f}] {title}: {text[:width]}{'...' if len(text) > width else ''}")


def demo_index(embedder):
    """The shipped demo corpus indexed with the embedder's teacher, and the demo's scripted conversation."""
    from .index import VectorIndex

    data = files("native_retriever") / "resources"
    corpus = [json.loads(line) for line in (data / "demo_corpus.jsonl").read_text().splitlines() if line.strip()]
    index = VectorIndex(embedder.dimension, info={"teacher": embedder.teacher.info})
    texts = [d["text"] for d in corpus]
    index.add(
        [d["id"] for d in corpus], embedder.embed_documents(texts), texts, [{"title": d["title"]} for d in corpus]
    )
    return index, json.loads((data / "demo_conversation.json").read_text())


def cmd_demo(args) -> None:
    """Index the shipped demo corpus, then hold a scripted multi-turn conversation retrieving natively."""
    from .agent import native_turn

    started = time.perf_counter()
    embedder = _embedder(args)
    index, script = demo_index(embedder)
    print(
        f"Loaded {embedder.head.config.llm.get('name')} + head, indexed {len(index)} passages with the teacher "
        f"in {time.perf_counter() - started:.1f} s.\n"
    )
    messages: list[dict] = []
    hybrid = hybrid_of(args)
    how = "fused with BM25 on the last questions" if hybrid else "the head's vector alone"
    for turn in script["turns"]:
        messages.append({"role": "user", "content": turn})
        result = native_turn(embedder, index, messages, k=args.k, hybrid=hybrid)
        ms = result.timings
        print(f"User: {turn}")
        print(
            f"  retrieved from the agent's own prefill of the conversation, {how} (prefill {ms['prefill']:.0f} ms, "
            f"head {ms['head']:.1f} ms, search {ms['search']:.1f} ms):"
        )
        _show_hits(result.hits)
        answer_ms = ms["passages_prefill"] + ms["answer"]
        print(f"Assistant: {result.answer}   (answer on the same KV cache {answer_ms:.0f} ms)\n")
        messages.append({"role": "assistant", "content": result.answer})


def cmd_index(args) -> None:
    """Index a folder of text or Markdown files with the teacher."""
    from .checks import check_output_path
    from .documents import load_folder
    from .index import VectorIndex
    from .teacher import Teacher

    check_output_path(args.output, "--output", kind="folder", saves="index")  # before any embedding
    passages = load_folder(args.folder, max_words=args.max_words)
    teacher = Teacher.from_pretrained(args.teacher, device=args.device)
    vectors = teacher.encode([p["text"] for p in passages], show_progress=True)
    index = VectorIndex(teacher.dim, kind=args.kind, info={"teacher": teacher.info})
    index.add([p["id"] for p in passages], vectors, [p["text"] for p in passages], [p["metadata"] for p in passages])
    index.save(args.output)
    print(f"Indexed {len(passages)} passages from {args.folder} into {args.output}.")


def cmd_search(args) -> None:
    """Search an index with a standalone question, embedded by the agent LLM and the head."""
    embedder = _embedder(args)
    index = _open_index(args.index, embedder)
    hits = index.search(embedder.embed_query(args.query), k=args.k, texts=[args.query], hybrid=hybrid_of(args))
    _show_hits(hits[0])


def cmd_chat(args) -> None:
    """Chat over an index: each turn prefills the conversation once, retrieves from that prefill, then answers."""
    from .agent import native_turn

    embedder = _embedder(args)
    index = _open_index(args.index, embedder)
    messages: list[dict] = []
    print("Ask a question (an empty line or Ctrl-D ends the chat).")
    for line in sys.stdin:
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        result = native_turn(embedder, index, messages, k=args.k, hybrid=hybrid_of(args))
        _show_hits(result.hits)
        print(f"Assistant: {result.answer}")
        _forget_cut_turns(embedder, messages)
        messages.append({"role": "assistant", "content": result.answer})


def _forget_cut_turns(embedder, messages: list[dict]) -> None:
    """Drop the oldest turns the window cut from this turn's conversation (a system message stays): every later turn
    cuts them too, so the history stays about one window long however long the chat runs."""
    first = 1 if messages[0]["role"] == "system" else 0
    del messages[first : first + embedder.tokenize(messages).dropped_messages]


def _per_folder(values: list, folders: list[str], flag: str) -> list:
    """``values`` given once for all ``folders`` or once per folder, as one value per folder."""
    if len(values) not in (1, len(folders)):
        raise SystemExit(f"{flag} takes one number, or one per --train folder.")
    return values * len(folders) if len(values) == 1 else list(values)


def cmd_train_head(args) -> None:
    """Cache hidden states and teacher vectors, train a head with early stopping, save the best."""
    from .checks import check_output_path
    from .training.pipeline import train_head_from_folders
    from .training.trainer import TrainConfig

    require("train", "ranx", what="native-retriever train-head")
    check_output_path(args.output, "--output", kind="folder", saves="head")  # before any data or model loads
    if args.corpus:
        return _train_head_from_corpus(args)
    if args.dev is None and args.dev_holdout is None:
        raise SystemExit("train-head --train needs --dev FOLDER or --dev-holdout N for model selection.")
    # the count lists are checked before any data or model loads (train_head_from_folders checks the output folder)
    _per_folder(args.max_train_queries or [None], args.train, "--max-train-queries")
    _per_folder(args.passage_queries or [0], args.train, "--passage-queries")
    head = train_head_from_folders(
        args.train,
        args.dev,
        dev_holdout=args.dev_holdout,
        output=args.output,
        config=TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}),
        llm=args.llm,
        teacher=args.teacher,
        device=args.device,
        cache=args.cache,
        max_train_queries=args.max_train_queries,
        passage_queries=args.passage_queries,
        max_dev_queries=args.max_dev_queries,
        max_tokens=args.max_tokens,
        shard_size=args.shard_size,
    )
    if _main_process():
        report = {"output": str(Path(args.output)), "dev": head.config.metrics["dev"], "cache": _cache_report(head)}
        print(json.dumps(report, indent=2))


def _cache_report(head) -> dict:
    """The size of the training hidden-state cache the head was trained from (its dev split aside)."""
    data = head.config.training["data"]
    conversations, stored = sum(d["queries"] for d in data), sum(d["cached_bytes"] for d in data)
    return {
        "conversations": conversations,
        "bytes": stored,
        "bytes_per_conversation": round(stored / max(conversations, 1)),
    }


def _main_process() -> bool:
    """Whether this is the process that reports (rank 0 under torchrun / accelerate launch, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def _train_head_from_corpus(args) -> None:
    from .training.pipeline import train_head_from_corpus
    from .training.trainer import TrainConfig

    for flag in ("dev", "dev_holdout", "max_train_queries", "passage_queries", "max_dev_queries"):
        if getattr(args, flag):
            raise SystemExit(f"--{flag.replace('_', '-')} goes with --train, not --corpus.")
    head, counts = train_head_from_corpus(
        args.corpus,
        args.output,
        config=TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}),
        synthetic=_synthetic_config(args),
        llm=args.llm,
        teacher=args.teacher,
        device=args.device,
        cache=args.cache,
        max_passages=args.max_passages,
        max_tokens=args.max_tokens,
        init={None: True, "none": None}.get(args.init_head, args.init_head),
        shard_size=args.shard_size,
    )
    report = {"output": str(Path(args.output)), "conversations": dataclasses.asdict(counts)}
    if _main_process():
        print(json.dumps({**report, "dev": head.config.metrics["dev"], "cache": _cache_report(head)}, indent=2))


def cmd_write_conversations(args) -> None:
    """Write training conversations about a corpus with the LLM; save them as a data folder."""
    from .checks import check_output_path
    from .training.pipeline import Models, corpus_passages, synthetic_data, write_data_folder

    check_output_path(args.output, "--output", kind="folder", saves="data-folder")
    config = _synthetic_config(args)
    name, passages = corpus_passages(args.corpus, args.max_passages)  # fails before any model loads
    models = Models.load(args.llm, args.teacher, args.device)
    data, counts = synthetic_data(name, passages, models, config=config, cache=args.cache)
    write_data_folder(data, args.output)
    print(json.dumps({"output": str(Path(args.output)), "conversations": dataclasses.asdict(counts)}, indent=2))


def cmd_eval(args) -> None:
    """Score the retrieval systems side by side on one data folder; print and optionally write JSON."""
    from .checks import check_output_path
    from .evaluation import SYSTEMS, evaluate, require_extras

    require("eval", what="native-retriever eval")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    require_extras([SYSTEMS[s] for s in systems if s in SYSTEMS])
    # Every argument and output path is checked before any model loads (evaluate checks the data and the systems).
    adapters = _latent_adapter_folders(args, systems)
    if args.output:
        check_output_path(args.output, "--output", kind="file")
    if args.save_runs:
        check_output_path(args.save_runs, "--save-runs", kind="folder")
    if args.generated_queries:
        check_output_path(args.generated_queries, "--generated-queries", kind="file")
    report = evaluate(
        args.data,
        systems,
        llm=args.llm,
        head=args.head,
        query_head=args.query_head,
        teacher=args.teacher,
        latent_adapters=adapters,
        latent_k=args.latent_k,
        device=args.device,
        max_queries=args.max_queries,
        batch_size=args.batch_size,
        generated_queries=args.generated_queries,
        save_runs=args.save_runs,
    )
    for name, metrics in report["systems"].items():
        story = metrics.get("within_story")
        print(
            f"{name:22s} R@10 {metrics['recall@10']:.3f}  MRR@10 {metrics['mrr@10']:.3f}  "
            f"nDCG@10 {metrics['ndcg@10']:.3f}  ({metrics['queries']} queries)"
            + (f"  within the story: MRR@10 {story['mrr@10']:.3f}" if story else "")
        )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


def cmd_compare(args) -> None:
    """Paired significance tests between runs saved by ``eval --save-runs``; print the table, optionally JSON."""
    from .checks import check_output_path
    from .data import load_data
    from .evaluation import compare_runs, comparison_dict

    require("eval", "ranx", what="native-retriever compare")
    if args.output:
        check_output_path(args.output, "--output", kind="file")
    data = load_data(args.data, max_queries=args.max_queries, require_judged=True)
    report = compare_runs(data.qrels, args.runs, stat_test=args.test, max_p=args.max_p, permutations=args.permutations)
    print(report.to_table())
    print(
        f"Superscripts: significantly better (p < {args.max_p}, {report.get_stat_test_label(args.test)}) than "
        f"the runs of those letters; {len(data.qrels)} queries of {data.name}."
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        facts = {"data": data.name, "queries": len(data.qrels), "max_p": args.max_p, "runs": args.runs}
        facts |= {"permutations": args.permutations} if args.test == "fisher" else {}
        result = comparison_dict(report) | facts
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


def _latent_adapter_folders(args, systems: list[str]) -> dict[str, str]:
    """The adapter folder of each latent system asked for; a missing ``--<system>-adapter`` stops the command."""
    folders = {}
    for name in ("latent", "latent-contrastive"):
        if name in systems:
            folder = getattr(args, name.replace("-", "_") + "_adapter")
            if not folder:
                raise SystemExit(f"System {name} needs --{name}-adapter FOLDER (train one with train-latent).")
            folders[name] = folder
    return folders


def _add_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", help=LLM_HELP)
    parser.add_argument(
        "--head", help="head folder (default: the shipped head made for the LLM, matched by its weight fingerprint)"
    )
    parser.add_argument("--teacher", help="teacher name or folder (default: the head's teacher)")
    add_device(parser)


TRAIN_HELP = {
    "architecture": "head architecture: linear, attention (attention pooling) or transformer",
    "input_mode": "what the head reads: context (the conversation) or query (a generated search query's tokens)",
    "span": "which token states the head reads: all, last_user (the last user message), last, or query "
    "(--tokens is the same option, its earlier name)",
    "layers": "LLM hidden-state layers the head reads, averaged (-1: the final normed layer)",
    "max_input_tokens": "the most recent token states the head reads",
    "pool_window": "transformer head: mean-pool this many consecutive tokens (counted from the end) first",
    "d_model": "width of the head's attention / transformer layers",
    "num_layers": "transformer head: encoder layers",
    "num_heads": "attention and transformer heads: attention heads",
    "dropout": "dropout inside the head while training",
    "target": "teacher text the head is aligned to: history (the conversation), history-N (its last N messages) "
    "or question",
    "epochs": "most passes over the training data (early stopping may end sooner)",
    "batch_size": "queries per training step",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup": "fraction of the steps with a linear learning-rate warm-up (then cosine decay)",
    "clip": "gradient-norm clipping",
    "align_weight": "weight of the cosine alignment to the teacher's vector of the target",
    "contrastive_weight": "weight of the InfoNCE loss against in-batch and hard negatives",
    "rank_weight": "weight of the KL to the teacher's scores of its top --rank-top-k passages",
    "contrastive_temperature": "temperature of the InfoNCE loss",
    "rank_temperature": "temperature of the score KL",
    "hard_negatives": "hard negatives per query per step, sampled from the teacher's top --hard-pool non-positives",
    "hard_pool": "teacher-ranked non-positives the hard negatives are drawn from",
    "rank_top_k": "teacher top passages the score KL covers",
    "patience": "epochs without a better dev Recall@10 (ties: a better MRR@10) before stopping",
    "seed": "random seed",
}


TRAIN_ALIASES = {"span": ["--tokens"]}  #: earlier flag names that still work


def _add_train_config(parser: argparse.ArgumentParser) -> None:
    from .training.trainer import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flags = ["--" + field.name.replace("_", "-"), *TRAIN_ALIASES.get(field.name, [])]
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        text = f"{TRAIN_HELP.get(field.name, field.name.replace('_', ' '))} (default {shown})"
        if isinstance(default, list):
            parser.add_argument(*flags, type=int, nargs="+", default=default, dest=field.name, help=text)
        else:
            parser.add_argument(*flags, type=type(default), default=default, dest=field.name, help=text)


def _add_synthetic(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--turns", type=positive_int, default=3, help="questions per passage (with --corpus; default 3)"
    )
    parser.add_argument(
        "--prompts",
        help="JSON file overriding the generation prompts (keys of native_retriever.training.synthetic."
        "DEFAULT_PROMPTS; docs/training.md) (default: those prompts)",
    )
    parser.add_argument("--max-passages", type=positive_int, help="the first N passages of the corpus (default: all)")
    if parser.prog.endswith("train-head"):
        parser.add_argument(
            "--init-head",
            help="with --corpus: the head to adapt to the corpus, a folder, or 'none' for a new head from the "
            "architecture options (default: the shipped head made for the LLM, if any)",
        )


def _synthetic_config(args):
    from .training.synthetic import SyntheticConfig

    prompts = {}
    if args.prompts:
        try:
            prompts = json.loads(Path(args.prompts).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SystemExit(f"--prompts {args.prompts}: cannot be read as JSON ({exc}).") from exc
        if not isinstance(prompts, dict):
            raise SystemExit(f"--prompts {args.prompts}: give a JSON object of prompt keys and texts.")
    return SyntheticConfig(turns=args.turns, prompts=prompts)


def build_parser() -> argparse.ArgumentParser:
    """The `native-retriever` argument parser with all its subcommands."""
    parser = argparse.ArgumentParser(prog="native-retriever", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="index a small shipped corpus and chat over it with native retrieval")
    _add_models(demo)
    demo.add_argument("-k", type=positive_int, default=3, help="passages retrieved each turn (default 3)")
    add_hybrid(demo)
    demo.set_defaults(func=cmd_demo)

    index = sub.add_parser("index", help="index a folder of .txt/.md files with the teacher")
    index.add_argument("folder", help="folder of .txt, .md, .markdown or .rst files, read recursively")
    index.add_argument(
        "--output", "-o", required=True, help="index folder to write (an index there is replaced; required)"
    )
    index.add_argument("--teacher", help="teacher name or folder (default: sentence-transformers/all-MiniLM-L6-v2)")
    index.add_argument(
        "--kind",
        choices=["flat", "ivf", "hnsw"],
        default="flat",
        help="FAISS index: flat (exact), ivf or hnsw (approximate, for large corpora) (default flat)",
    )
    index.add_argument(
        "--max-words",
        type=at_least(MIN_MAX_WORDS),
        default=180,
        help=f"most words in a passage; paragraphs are packed up to it (at least {MIN_MAX_WORDS}, default 180)",
    )
    add_device(index)
    index.set_defaults(func=cmd_index)

    search = sub.add_parser("search", help="search an index with a question")
    search.add_argument("index", help="index folder written by `native-retriever index`")
    search.add_argument("query", help="the question, embedded as a one-message conversation")
    search.add_argument("-k", type=positive_int, default=5, help="passages to print (default 5)")
    add_hybrid(search)
    _add_models(search)
    search.set_defaults(func=cmd_search)

    chat = sub.add_parser("chat", help="chat over an index, reading questions from standard input")
    chat.add_argument("index", help="index folder written by `native-retriever index`")
    chat.add_argument("-k", type=positive_int, default=3, help="passages retrieved each turn (default 3)")
    add_hybrid(chat)
    _add_models(chat)
    chat.set_defaults(func=cmd_chat)

    train = sub.add_parser(
        "train-head",
        help="train a projection head on data folders (docs/data-format.md), or on a corpus alone (--corpus)",
    )
    sources = train.add_mutually_exclusive_group(required=True)
    sources.add_argument("--train", nargs="+", help="training data folders (required: this or --corpus)")
    sources.add_argument(
        "--corpus",
        help="a folder of .txt / .md files, or a data folder with only corpus.jsonl.gz: train on conversations the "
        "LLM writes about its passages, and on the passages themselves; no judged queries needed (required: this "
        "or --train)",
    )
    selection = train.add_mutually_exclusive_group()
    selection.add_argument(
        "--dev",
        help="data folder for model selection, early stopping (required with --train: this or --dev-holdout)",
    )
    selection.add_argument(
        "--dev-holdout",
        type=positive_int,
        metavar="N",
        help="hold out the last N conversations (by story_id) of the first --train folder for model selection "
        "(required with --train: this or --dev; with --corpus the last tenth of the passages' conversations are held "
        "out)",
    )
    train.add_argument("--output", "-o", required=True, help="head folder to write (required)")
    train.add_argument("--llm", help=LLM_HELP)
    train.add_argument("--teacher", help="teacher name or folder (default: sentence-transformers/all-MiniLM-L6-v2)")
    train.add_argument("--cache", help="cache folder (default: $NATIVE_RETRIEVER_HOME/training)")
    train.add_argument(
        "--max-train-queries",
        type=positive_int,
        nargs="+",
        help="first N judged queries of each training folder (or one N each) (default: all)",
    )
    train.add_argument(
        "--passage-queries",
        type=at_least(0),
        nargs="+",
        metavar="N",
        help="also train on the first N passages of each training corpus as one-message conversations (0: none); "
        "the dev set's relevant passages are left out (default: none)",
    )
    train.add_argument(
        "--max-dev-queries", type=positive_int, help="first N judged queries of the --dev folder (default: all)"
    )
    train.add_argument(
        "--max-tokens", type=positive_int, default=512, help="conversation window in LLM tokens (default 512)"
    )
    train.add_argument(
        "--shard-size",
        type=positive_int,
        default=256,
        help="conversations per hidden-state cache shard: the unit of resuming, and of work split between the "
        "processes of torchrun / accelerate launch (default 256)",
    )
    _add_synthetic(train)
    add_device(train)
    _add_train_config(train)
    train.set_defaults(func=cmd_train_head)

    write = sub.add_parser(
        "write-conversations",
        help="write training conversations about a corpus with the LLM (the slow step of train-head --corpus)",
        description="The LLM writes a short conversation about each passage (a question, then follow-ups that lean "
        "on the earlier turns); the teacher keeps the questions it can tie back to their passage. Written as a data "
        "folder (docs/data-format.md) that train-head --train and eval read. Cached and resumable.",
    )
    write.add_argument("--corpus", required=True, help="a folder of .txt / .md files, or a data folder (required)")
    write.add_argument("--output", "-o", required=True, help="data folder to write (required)")
    write.add_argument("--llm", help=LLM_HELP)
    write.add_argument("--teacher", help="teacher name or folder (default: sentence-transformers/all-MiniLM-L6-v2)")
    write.add_argument("--cache", help="cache folder (default: $NATIVE_RETRIEVER_HOME/training)")
    _add_synthetic(write)
    add_device(write)
    write.set_defaults(func=cmd_write_conversations)

    default_systems = (  # evaluation.DEFAULT_SYSTEMS (tests/test_cli.py checks), kept here so --help imports no torch
        "bm25-question,teacher-question,teacher-history,teacher-last5,generate-then-encode,native-context,"
        "native-context-dense,native-query"
    )
    evaluate = sub.add_parser(
        "eval",
        help="score retrieval systems side by side on a data folder",
        description="Score retrieval systems side by side on one data folder (docs/data-format.md): Recall@10, "
        "MRR@10 and nDCG@10 over its judged queries, printed and optionally written as JSON.",
    )
    evaluate.add_argument("--data", required=True, help="data folder: corpus, queries and qrels.tsv (required)")
    evaluate.add_argument(
        "--systems",
        default=default_systems,
        help="comma-separated systems to score, from the default ones, latent and latent-contrastive "
        f"(default {default_systems})",
    )
    evaluate.add_argument(
        "--query-head", help="head for native-query (default: the shipped query head made for the LLM)"
    )
    evaluate.add_argument(
        "--max-queries", type=positive_int, help="the first N judged queries in file order (default: all)"
    )
    evaluate.add_argument("--output", help="write the JSON report here (default: print only)")
    evaluate.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="conversations per LLM forward pass and per query generation batch (default 8)",
    )
    evaluate.add_argument(
        "--generated-queries",
        help="JSON file of generated search queries (query id -> text), read and extended, so generate-then-encode "
        "and native-query generate each query once (default: generate them every time)",
    )
    evaluate.add_argument(
        "--latent-adapter", help="adapter folder for the latent system, from train-latent (default: none)"
    )
    evaluate.add_argument("--latent-contrastive-adapter", help="adapter folder for latent-contrastive (default: none)")
    evaluate.add_argument("--latent-k", type=positive_int, help="latent steps at inference (default: each adapter's K)")
    evaluate.add_argument(
        "--save-runs",
        metavar="DIR",
        help="write each system's top-10 run to DIR/<system>.trec, for `compare` (default: none)",
    )
    _add_models(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    comparison = sub.add_parser("compare", help="paired significance tests between runs saved by eval --save-runs")
    comparison.add_argument("runs", nargs="+", metavar="RUN", help="TREC run files (at least two)")
    comparison.add_argument(
        "--data", required=True, help="the data folder the runs were made on, for its qrels (required)"
    )
    comparison.add_argument(
        "--max-queries",
        type=positive_int,
        help="the same --max-queries as the eval that made the runs (default: all)",
    )
    comparison.add_argument(
        "--test",
        choices=("student", "fisher", "tukey"),  # evaluation.STAT_TESTS, not imported: it loads torch
        default="student",
        help="paired t-test, Fisher's randomization test or Tukey's HSD (default student)",
    )
    comparison.add_argument("--max-p", type=float, default=0.05, help="significance level (default 0.05)")
    comparison.add_argument(
        "--permutations",
        type=int,  # compare_runs refuses fewer than 1
        default=10_000,
        help="random permutations of Fisher's test (default 10000)",
    )
    comparison.add_argument(
        "--output", help="write ranx's report (scores, p-values, wins/ties/losses) as JSON (default: print only)"
    )
    comparison.set_defaults(func=cmd_compare)

    from .latent.cli import add_commands as add_latent_commands

    add_latent_commands(sub)  # train-latent, latent-rationales
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `native-retriever` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    from .errors import NativeRetrieverError

    try:
        if getattr(args, "device", None) is not None:
            from .models import resolve_device

            resolve_device(args.device)  # a device this machine lacks fails before any data or model loads
        args.func(args)
    except NativeRetrieverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
