"""The three head losses of Jiang 2026 (arXiv:2603.08429), as small modules over unit vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentLoss(nn.Module):
    """Cosine distance between the head's vector and the teacher's vector of the query text."""

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cosine distance of unit `student` vectors to unit `target` vectors."""
        return (1 - (student * target).sum(-1)).mean()


class ContrastiveLoss(nn.Module):
    """InfoNCE of each query against candidate documents (in-batch positives and hard negatives).

    ``candidates``: (C, D) document vectors; ``labels``: (B,) index of each query's positive among them;
    ``ignore``: (B, C) true where a candidate is another positive of that query (a false negative), left out.
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self, student: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor
    ) -> torch.Tensor:
        """Mean InfoNCE loss of unit `student` (B, D) against `candidates` (C, D), positives at `labels`."""
        logits = student @ candidates.T / self.temperature
        logits = logits.masked_fill(ignore, float("-inf"))
        return F.cross_entropy(logits, labels)


class RankDistillationLoss(nn.Module):
    """KL(teacher || head) of the score distributions over the teacher's top-k candidates of each query."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, target: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Mean KL(teacher || head) of the score distributions over each query's teacher top-k `candidates`."""
        # candidates: (B, k, D) document vectors of the teacher's top-k for each query
        teacher_scores = torch.einsum("bd,bkd->bk", target, candidates) / self.temperature
        student_scores = torch.einsum("bd,bkd->bk", student, candidates) / self.temperature
        return F.kl_div(
            F.log_softmax(student_scores, -1), F.log_softmax(teacher_scores, -1), log_target=True, reduction="batchmean"
        )
