"""LaSER's losses over unit vectors and a batch of document vectors (arXiv:2603.01425).

InfoNCE and the score KL are the head trainer's (``native_retriever.training.losses``); this module adds the latent
steps' alignment to the explicit view's rationale boundaries.
"""

from __future__ import annotations

import torch
from torch import nn

from ..training.losses import ScoreDistillation


def boundary_steps(num_segments: int, k: int) -> list[int]:
    """Which rationale segment each of the K latent steps aligns to.

    K or more segments: uniform (linspace) downsampling, always keeping the first and the last; fewer segments than
    K: all of them in order, the last repeated to fill K (repeat-padding).
    """
    if num_segments < 1:
        raise ValueError("A rationale needs at least one segment (its final token) to align latent steps to.")
    if num_segments >= k:
        return torch.linspace(0, num_segments - 1, k).round().long().tolist()
    return list(range(num_segments)) + [num_segments - 1] * (k - num_segments)


class TrajectoryAlignment(nn.Module):
    """The score KL per latent step against the explicit view's states at the aligned rationale boundaries.

    ``segments`` and ``latent``: (B, K, D) unit vectors (explicit boundary states, latent step states).
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.kl = ScoreDistillation(temperature)

    def forward(
        self, segments: torch.Tensor, latent: torch.Tensor, docs: torch.Tensor, ignore: torch.Tensor
    ) -> torch.Tensor:
        """Mean score KL over the K latent steps, each against its aligned explicit boundary state."""
        steps = latent.shape[1]
        return sum(self.kl(segments[:, s], latent[:, s], docs, ignore) for s in range(steps)) / steps
