"""Learning-rate schedules: linear warmup, then cosine, linear or constant."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "linear", "constant")


def lr_multiplier(index: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr for the optimizer step with 0-based ``index``.

    Warmup ramps ``1/w, 2/w, ..., 1`` over the first ``w`` steps; then ``cosine`` decays as
    ``0.5 (1 + cos(pi * progress))`` and ``linear`` as ``1 - progress`` with
    ``progress = (index - w) / (total - w)`` in ``[0, 1)``, so the last step's lr stays > 0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if index < warmup_steps:
        return (index + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (index - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(progress, 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, schedule: str
) -> LambdaLR:
    """A ``LambdaLR`` stepping once per optimizer step (its ``last_epoch`` counts steps)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")

    def multiplier(index: int) -> float:
        return lr_multiplier(
            index, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule
        )

    return LambdaLR(optimizer, multiplier)
