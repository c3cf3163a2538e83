"""Several training processes on one machine or many, started by ``torchrun`` or ``accelerate launch``.

Both launchers set ``RANK`` and ``WORLD_SIZE`` (and ``MASTER_ADDR`` / ``MASTER_PORT``) for every process; :func:`ranks`
reads them and joins the process group (``nccl`` on GPUs, ``gloo`` on CPUs). One process (no launcher) is rank 0
of 1, and nothing here does anything then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes shared results (the head, the teacher vectors)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (nothing with one process)."""
        if self.world > 1:
            dist.barrier()

    def all_agree(self, value: float) -> float:
        """``value`` as rank 0 has it, on every process (early stopping decides the same everywhere)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())


def ranks() -> Ranks:
    """The launcher's ranks, joining the process group on first use; rank 0 of 1 without a launcher."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())
