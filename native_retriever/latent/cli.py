"""The latent view's subcommands: ``train-latent`` and ``latent-rationales`` (registered by native_retriever.cli)."""

from __future__ import annotations

import dataclasses
import json

from ..extras import require


def cmd_train_latent(args) -> None:
    """Train a latent-view adapter on one data folder and save it (adapter + latent_config.json + curves)."""
    from ..checks import check_output_path
    from .training import LatentTrainConfig, train_latent_from_folder

    require("latent", what="native-retriever train-latent")
    check_output_path(args.output, "--output", kind="folder", saves="latent-adapter")  # before data or model load
    config = LatentTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LatentTrainConfig)})
    encoder = train_latent_from_folder(
        args.train,
        args.output,
        config,
        llm=args.llm,
        device=args.device,
        rationales=args.rationales,
        max_train_queries=args.max_train_queries,
        resume=args.resume,
    )
    training = encoder.config.training
    print(
        json.dumps(
            {"output": args.output, "examples": training["examples"], "steps": training["optimizer_steps"]}
            | {"seconds": training["seconds"], "rationales_cut": training["rationales_cut"]},
            indent=2,
        )
    )


def cmd_latent_rationales(args) -> None:
    """Write (and extend) a cache of rationales produced by a local instruct model, one JSON line per query."""
    from ..checks import check_output_path
    from .training import write_rationales

    check_output_path(args.output, "--output", kind="file")  # named by its flag; write_rationales checks it again
    count = write_rationales(
        args.data,
        args.output,
        llm=args.llm,
        device=args.device,
        max_queries=args.max_queries,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    print(f"{count} rationales in {args.output}.")


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
    from ..arguments import LLM_HELP, add_device, positive_int
    from .training import LatentTrainConfig

    train = sub.add_parser("train-latent", help="train a latent-view (LaSER) LoRA adapter on a data folder")
    train.add_argument("--train", required=True, help="training data folder, docs/data-format.md (required)")
    train.add_argument("--output", "-o", required=True, help="adapter folder to write (required)")
    train.add_argument("--llm", help=LLM_HELP)
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
    rationales.add_argument("--llm", help=f"instruct {LLM_HELP}")
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
