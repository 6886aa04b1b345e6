"""Data parallelism for :class:`ml.distillation.recipe.DistillRecipe` across processes.

Every rank builds the same student and teacher, takes a disjoint share of each global batch
(``World.shard``) and runs forward and backward on it; before the optimizer step the
gradients are summed over ranks (``World.sum_gradients``). The recipe divides each step's loss
by the step's *global* count of response tokens (``World.sum``), so the summed gradient is the
one a single process gets on the whole batch, and the same spec trains the same model on 1 or
N processes up to floating-point summation order.

This is what ``torch.nn.parallel.DistributedDataParallel`` does with ``no_sync()`` during
gradient accumulation (an all-reduce of the gradients after backward, parameters broadcast
from rank 0 at the start), done explicitly instead of through its wrapper because the recipe
also calls the student outside ``forward``: ``generate`` for on-policy data, the language-model
head alone for chunked KD, and a cross-vocabulary projector that lives beside the student. A
rank can also get no example at all in the last micro-batch of an epoch; an explicit reduce
needs no dummy forward pass for it. DDP overlaps the reduce with backward; this does not.

The teacher is replicated on every rank (frozen, no gradients). Only rank 0 writes (metrics,
events, checkpoints, the saved model): ``World.writes``. Backend: gloo on the CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Gradients are reduced in flat buckets of at most this many elements (float32: 100 MB), so a
# large student does not need a second full copy of its gradients at once.
BUCKET_ELEMENTS = 25_000_000


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; ``World()`` is one process alone.

    ``device`` is where reduced tensors live: the CPU for gloo, this rank's GPU for nccl."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Whether this rank records anything (rank 0 only, so nothing is written twice)."""
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's share of one micro-batch of the global batch: every ``world_size``-th
        example from ``rank``. Shares are disjoint and together cover ``indices``; a rank's
        share may be empty when the micro-batch has fewer examples than ranks."""
        return indices[self.rank :: self.world_size]

    def sum(self, values: list[float]) -> list[float]:
        """The element-wise sum of ``values`` over all ranks (float64), the same on every rank."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: a stop request seen by rank 0 stops all
        ranks at the same step (a rank that stopped alone would leave the others waiting)."""
        if not self.distributed:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each trainable parameter's gradient by its sum over ranks.

        A parameter with a gradient on some rank but not on this one (this rank had no
        example this step) takes zeros here; one with no gradient anywhere keeps ``None``, so
        the optimizer skips it exactly as a single process would."""
        if not self.distributed:
            return
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=self.device)
        dist.all_reduce(present, op=dist.ReduceOp.SUM)
        used = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in used:
            assert p.grad is not None
            bucket.append(p.grad)
            size += p.grad.numel()
            if size >= BUCKET_ELEMENTS:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (as DDP does when it wraps a
        model): ranks that built or resumed the student differently still start equal."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def join_world(device: str) -> World:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): nccl with this rank's
    GPU when ``device`` is CUDA, gloo on the CPU. Without those variables: one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    return World(rank=rank, world_size=world_size, device=device)


def leave_world(world: World) -> None:
    """Tear the process group down (every rank, at its end)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
