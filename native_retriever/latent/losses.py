"""LaSER's losses over unit vectors and a batch of document vectors (arXiv:2603.01425)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def masked_logits(queries: torch.Tensor, docs: torch.Tensor, ignore: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scores of each query against every batch document / temperature; ``ignore`` (other positives) -> -inf."""
    return (queries @ docs.T / temperature).masked_fill(ignore, float("-inf"))


class InfoNCE(nn.Module):
    """Cross-entropy of each query's positive among all the batch's documents (in-batch and hard negatives)."""

    def __init__(self, temperature: float = 0.02) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self, queries: torch.Tensor, docs: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor
    ) -> torch.Tensor:
        """Mean InfoNCE loss of unit `queries` (B, D) against `docs` (C, D), positives at `labels`, `ignore` masked."""
        return F.cross_entropy(masked_logits(queries, docs, ignore, self.temperature), labels)


class ScoreDistillation(nn.Module):
    """KL(teacher || student) of the score distributions over the batch's documents; teacher scores detached."""

    def __init__(self, temperature: float = 0.02) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self, teacher: torch.Tensor, student: torch.Tensor, docs: torch.Tensor, ignore: torch.Tensor
    ) -> torch.Tensor:
        """Mean KL(teacher || student) of the score distributions over `docs`, `ignore` masked."""
        target = F.log_softmax(masked_logits(teacher.detach(), docs.detach(), ignore, self.temperature), dim=-1)
        predicted = F.log_softmax(masked_logits(student, docs, ignore, self.temperature), dim=-1)
        # ignored columns are -inf on both sides: zero them so 0 * (-inf - -inf) does not give NaN
        target, predicted = target.masked_fill(ignore, 0.0), predicted.masked_fill(ignore, 0.0)
        return (target.exp() * (target - predicted)).sum(-1).mean()


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
