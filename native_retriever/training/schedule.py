"""The learning-rate schedule of both trainers: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math

import torch


def cosine_warmup(optimizer: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule over ``steps`` optimizer steps: linear warm-up over the first ``warmup`` fraction, then cosine decay.

    The factor at step ``s`` is ``min(1, (s + 1) / w) * (1 + cos(pi * min(1, s / steps))) / 2`` with
    ``w = max(1, int(warmup * steps))``; call ``step()`` once per optimizer step.
    """
    ramp = max(1, int(warmup * steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / ramp) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
