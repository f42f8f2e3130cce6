"""Ranks of a multi-process run (accelerate launch, torchrun): who am I, how many are we, wait for all.

Every stage that shards work (collect, explain, score) uses this one reading of the launcher's
environment; a single process is rank 0 of 1 and never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch

            torch.distributed.barrier()

    def mine(self, items: list) -> list:
        """This rank's share: every world-th item, starting at its rank."""
        return items[self.rank :: self.world]


def current() -> Dist:
    """Rank and world size from the launcher's environment; joins the process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())


def launched_rank() -> int:
    """The rank the launcher assigned, without joining any process group (for printing on rank 0 only)."""
    return int(os.environ.get("RANK", "0"))
