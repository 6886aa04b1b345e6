"""Which training examples each optimizer step of :class:`DistillRecipe` takes.

An epoch is a seeded permutation of the examples, cut into micro-batches of ``batch_size``;
an optimizer step takes the next ``grad_accum`` of them and never spans two epochs. The order
is a pure function of (seed, epoch), so ``(epoch, position)`` is all a checkpoint needs to
continue identically. With several processes each rank takes its disjoint share of every
micro-batch (``World.shard``), so the global batch is the same on 1 or N processes.
"""

from __future__ import annotations

import torch

from ml.distillation.distributed import World


class BatchOrder:
    def __init__(
        self,
        n_examples: int,
        batch_size: int,
        grad_accum: int,
        seed: int,
        world: World,
        *,
        keep_empty: bool = False,
    ) -> None:
        self.n_examples, self.batch_size, self.grad_accum = n_examples, batch_size, grad_accum
        self.seed, self.world = seed, world
        # A sharded student needs every rank to see every micro-batch, empty shares included.
        self.keep_empty = keep_empty
        self.micro_per_epoch = -(-n_examples // batch_size)
        self.steps_per_epoch = -(-self.micro_per_epoch // grad_accum)
        self.epoch = 0
        self.position = 0  # micro-batches of the current epoch already consumed
        self._cache: tuple[int, list[int]] | None = None

    def _order(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._cache = (epoch, torch.randperm(self.n_examples, generator=generator).tolist())
        return self._cache[1]

    def next_step(self) -> list[list[int]]:
        """This rank's example indices for each micro-batch of the next optimizer step (a
        micro-batch whose share for this rank is empty is left out, or kept as ``[]`` with
        ``keep_empty``), and advance."""
        order, size = self._order(self.epoch), self.batch_size
        end = min(self.position + self.grad_accum, self.micro_per_epoch)
        shares = [
            self.world.shard(order[m * size : (m + 1) * size]) for m in range(self.position, end)
        ]
        self.position = end
        if self.position >= self.micro_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return shares if self.keep_empty else [share for share in shares if share]
