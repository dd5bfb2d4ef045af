"""Data-parallel training over processes (``torch.distributed``: NCCL on GPUs, gloo on CPUs): which part of every step
a process computes, and the two collectives a step needs.

A step of global batch ``B`` with ``accum_steps = k`` on ``N`` processes is ``N * k`` micro-batches of ``B / (N * k)``
images; process ``r`` computes micro-batches ``r * k .. r * k + k - 1`` (its *slots*) and the gradients are summed
over the processes in one all-reduce before clipping. Every micro-batch draws its masks and donors from
``(seed, step, slot)`` alone, and refill donors come from the same micro-batch, as on one GPU of a data-parallel run:
so ``N`` processes at ``accum_steps = k`` train exactly the run one process trains at ``accum_steps = N * k`` (the
same images, masks and donors per micro-batch, the same summed gradient up to floating-point order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel run (``rank`` of ``world``); the default is a run on its own."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Shard:
        """The process group this process joined (Ray Train's TorchTrainer sets it up), else a run on its own."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    @property
    def leader(self) -> bool:
        """Rank 0 writes checkpoints and reports; every rank computes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def slots(self, count: int) -> range:
        """This process's share of a step's ``count`` micro-batches (contiguous; the last ranks may get fewer)."""
        per = math.ceil(count / self.world)
        return range(min(count, self.rank * per), min(count, (self.rank + 1) * per))

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes, in one all-reduce of a flat buffer (every process then
        holds the whole step's gradient, clips it and steps alike). A no-op for a run on its own."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = flat[offset:offset + grad.numel()].view_as(grad)
            offset += grad.numel()

    def earliest(self, value: Tensor) -> None:
        """``value`` (a step number on the device) set in place to its minimum over the processes."""
        if self.distributed:
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)

    def sum_counts(self, counts: list[int], device: torch.device) -> list[int]:
        """``counts`` summed over the processes (evaluation: correct answers and images per set)."""
        if not self.distributed:
            return counts
        tensor = torch.tensor(counts, dtype=torch.int64, device=device)
        torch.distributed.all_reduce(tensor)
        return [int(v) for v in tensor.cpu().tolist()]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


ALONE = Shard()
