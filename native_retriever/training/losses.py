"""The training losses over unit vectors, shared by the head trainer and latent training.

The head's three losses are those of Jiang 2026 (arXiv:2603.08429): alignment, InfoNCE and rank distillation (the
score KL over each query's teacher top-k); latent training (LaSER, arXiv:2603.01425) uses the same InfoNCE and score
KL over the batch's documents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentLoss(nn.Module):
    """Cosine distance between the head's vector and the teacher's vector of the query text."""

    def forward(self, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cosine distance of unit `student` vectors to unit `target` vectors."""
        return (1 - (student * target).sum(-1)).mean()


def scores(
    queries: torch.Tensor, docs: torch.Tensor, temperature: float, ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """Scores of each query (B, D) against its documents / temperature; ``ignore`` (B, C) columns -> -inf.

    ``docs`` is (C, D), shared by every query (in-batch documents), or (B, k, D), each query's own candidates.
    """
    logits = (queries @ docs.T if docs.dim() == 2 else torch.einsum("bd,bkd->bk", queries, docs)) / temperature
    return logits if ignore is None else logits.masked_fill(ignore, float("-inf"))


class InfoNCE(nn.Module):
    """InfoNCE of each query against candidate documents (in-batch positives and hard negatives).

    ``docs``: (C, D) document vectors; ``labels``: (B,) index of each query's positive among them;
    ``ignore``: (B, C) true where a candidate is another positive of that query (a false negative), left out.
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self, queries: torch.Tensor, docs: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor
    ) -> torch.Tensor:
        """Mean InfoNCE loss of unit `queries` (B, D) against `docs` (C, D), positives at `labels`, `ignore` masked."""
        return F.cross_entropy(scores(queries, docs, self.temperature, ignore), labels)


class ScoreDistillation(nn.Module):
    """KL(teacher || student) of the score distributions over documents; the teacher side is detached.

    ``docs`` is (C, D), the batch's documents for every query, or (B, k, D), each query's own candidates (the head's
    rank distillation over the teacher's top-k); ``ignore`` (B, C or k) leaves columns out of both distributions.
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self, teacher: torch.Tensor, student: torch.Tensor, docs: torch.Tensor, ignore: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean KL(teacher || student) of the score distributions of unit `teacher` and `student` (B, D) over `docs`."""
        target = F.log_softmax(scores(teacher.detach(), docs.detach(), self.temperature, ignore), dim=-1)
        predicted = F.log_softmax(scores(student, docs, self.temperature, ignore), dim=-1)
        if ignore is not None:  # ignored columns are -inf on both sides: zero them so 0 * (-inf - -inf) is not NaN
            target, predicted = target.masked_fill(ignore, 0.0), predicted.masked_fill(ignore, 0.0)
        return (target.exp() * (target - predicted)).sum(-1).mean()


def contrastive_batch(
    positives: list[list[int]], chosen: list[int], negatives: list[int]
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The candidate documents of an InfoNCE batch, each query's label among them and the false-negative mask.

    ``positives``: every positive document of each query; ``chosen``: the positive each query is scored on this step;
    ``negatives``: sampled negative documents. Candidates are ``chosen`` then ``negatives``, duplicates dropped; the
    mask is true where a candidate is another positive of that query (not a negative for it).
    """
    candidates = list(dict.fromkeys(chosen + negatives))
    column = {doc: c for c, doc in enumerate(candidates)}
    labels = torch.tensor([column[d] for d in chosen])
    ignore = torch.zeros((len(chosen), len(candidates)), dtype=torch.bool)
    for row, pos in enumerate(positives):
        for p in pos:
            if p in column and p != chosen[row]:
                ignore[row, column[p]] = True
    return candidates, labels, ignore
