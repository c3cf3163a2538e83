"""The latent view's subcommands: ``train-latent`` and ``latent-rationales`` (registered by native_retriever.cli)."""

from __future__ import annotations

import dataclasses
import json

from ..extras import require

RATIONALE_PROMPT = (
    "Read this conversation and explain, in two or three short sentences, what its last question is really asking "
    "about (resolve pronouns with names) and what information a passage must contain to answer it.\n\n"
    "{history}\n\nLast question: {question}"
)


def earlier_turns(messages: list[dict]) -> str:
    """The conversation before its current question, one message a line (the rationale prompt's context)."""
    lines = [f"{m['role']}: {m['content']}" for m in messages[:-1] if m["role"] != "system"]
    return "\n".join(lines) or "(no earlier turns)"


def cmd_train_latent(args) -> None:
    """Train a latent-view adapter on one data folder and save it (adapter + latent_config.json + curves)."""
    from ..data import load_data
    from ..models import load_llm
    from .training import LatentTrainConfig, build_examples, read_rationales, train_latent

    require("latent", what="native-retriever train-latent")
    config = LatentTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LatentTrainConfig)})
    data = load_data(args.train)
    rationales = read_rationales(args.rationales) if args.rationales else None
    examples = build_examples(data, rationales, args.max_train_queries, config.hard_pool, config.seed)
    model, tokenizer = load_llm(args.llm, device=args.device)
    info = {"name": data.name, "queries": len(examples), "passages": len(data.corpus), "rationales": args.rationales}
    encoder = train_latent(
        model,
        tokenizer,
        examples,
        [d["text"] for d in data.corpus],
        config,
        args.output,
        resume=args.resume,
        data_info=info,
    )
    training = encoder.config.training
    print(
        json.dumps(
            {"output": args.output, "examples": len(examples), "steps": training["optimizer_steps"]}
            | {"seconds": training["seconds"], "rationales_cut": training["rationales_cut"]},
            indent=2,
        )
    )


def cmd_latent_rationales(args) -> None:
    """Write (and extend) a cache of rationales produced by a local instruct model, one JSON line per query."""
    from tqdm.auto import tqdm

    from ..checks import check_output_path
    from ..data import load_data
    from ..generation import generate_texts
    from ..models import load_llm

    output = check_output_path(args.output, "--output", kind="file")  # before the data and the model load
    data = load_data(args.data)
    done = set()
    if output.is_file():
        done = {json.loads(line)["id"] for line in output.read_text().splitlines() if line.strip()}
    queries = [q for q in data.queries[: args.max_queries] if q["id"] not in done]
    model, tokenizer = load_llm(args.llm, device=args.device)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "a", encoding="utf-8") as handle:
        for start in tqdm(range(0, len(queries), args.batch_size), desc="Writing rationales"):
            chunk = queries[start : start + args.batch_size]
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
            for query, text in zip(chunk, generate_texts(model, tokenizer, chats, args.max_new_tokens)):
                handle.write(json.dumps({"id": query["id"], "rationale": text}) + "\n")
            handle.flush()
    print(f"{len(done) + len(queries)} rationales in {output}.")


LATENT_TRAIN_HELP = {
    "k": "latent steps: soft tokens fed back before the embedding is read (1: the last input token only)",
    "temperature": "softmax temperature of the soft tokens",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha (scale alpha / r)",
    "lora_dropout": "LoRA dropout",
    "target_modules": "comma-separated module names the LoRA adapts",
    "lora_layers": "adapt only the top N decoder layers (0: all)",
    "max_tokens": "conversation window in LLM tokens (latent and explicit view)",
    "document_max_tokens": "document window in LLM tokens",
    "max_rationale_tokens": "the explicit view's rationale window in LLM tokens; longer rationales are cut",
    "explicit_layout": "where the explicit view embeds: closed (at the next generation prompt) or reply "
    "(at the rationale)",
    "latent_weight": "weight of the latent view's InfoNCE",
    "explicit_weight": "weight of the explicit view's InfoNCE",
    "distill_weight": "weight of the output-level KL(explicit || latent)",
    "trajectory_weight": "weight of the trajectory alignment of the latent steps to rationale boundaries",
    "contrastive_temperature": "temperature of the InfoNCE losses",
    "distill_temperature": "temperature of the output-level KL",
    "trajectory_temperature": "temperature of the trajectory alignment",
    "batch_size": "queries per micro-batch (documents: 2 per query)",
    "grad_accum": "micro-batches per optimizer step",
    "epochs": "passes over the training queries",
    "lr": "AdamW learning rate",
    "warmup": "fraction of the optimizer steps with a linear learning-rate warm-up",
    "weight_decay": "AdamW weight decay",
    "clip": "gradient-norm clipping",
    "hard_pool": "one hard negative per query, drawn from its top N BM25 (history) non-positives",
    "checkpoint_every": "optimizer steps between checkpoints (for --resume)",
    "seed": "random seed",
}


def add_commands(sub) -> None:
    """Register ``train-latent`` and ``latent-rationales`` on the main parser's subparsers."""
    from ..arguments import add_device, positive_int
    from .training import LatentTrainConfig

    train = sub.add_parser("train-latent", help="train a latent-view (LaSER) LoRA adapter on a data folder")
    train.add_argument("--train", required=True, help="training data folder, docs/data-format.md (required)")
    train.add_argument("--output", "-o", required=True, help="adapter folder to write (required)")
    train.add_argument("--llm", help="LLM name or local folder (default: SmolLM2-135M-Instruct)")
    train.add_argument(
        "--max-train-queries", type=positive_int, help="a random sample of N judged queries, seeded (default: all)"
    )
    train.add_argument("--rationales", help="JSONL rationale cache from `latent-rationales` (default: data fields)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint (default: start afresh)")
    add_device(train)
    for field in dataclasses.fields(LatentTrainConfig):
        flag = "--" + field.name.replace("_", "-")
        text = f"{LATENT_TRAIN_HELP.get(field.name, field.name.replace('_', ' '))} (default {field.default})"
        train.add_argument(flag, type=type(field.default), default=field.default, dest=field.name, help=text)
    train.set_defaults(func=cmd_train_latent)

    rationales = sub.add_parser("latent-rationales", help="cache rationales for train-latent from a local LLM")
    rationales.add_argument("--data", required=True, help="data folder whose judged queries get rationales (required)")
    rationales.add_argument(
        "--output", "-o", required=True, help="JSONL file to write or extend; queries it holds are skipped (required)"
    )
    rationales.add_argument("--llm", help="instruct LLM (default: SmolLM2-135M-Instruct)")
    rationales.add_argument(
        "--max-queries", type=positive_int, help="the first N judged queries in file order (default: all)"
    )
    rationales.add_argument(
        "--max-new-tokens", type=positive_int, default=64, help="most tokens of each rationale (default 64)"
    )
    rationales.add_argument(
        "--batch-size", type=positive_int, default=8, help="conversations generated at once (default 8)"
    )
    add_device(rationales)
    rationales.set_defaults(func=cmd_latent_rationales)
