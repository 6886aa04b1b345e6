"""The interpolation schedule of TAID (Shing et al. 2025, ICLR, "TAID: Temporally Adaptive
Interpolated Distillation", the adaptive update of Algorithm 1).

TAID trains the student towards ``r_t = softmax((1 - t) * stopgrad(z_s) + t * z_t)`` (the loss
is ``taid`` in :mod:`ml.distillation.divergences`) while ``t`` moves from ``t_start`` to
``t_end``. After each optimizer step ``n`` (1-based, of ``N`` in all) with objective ``J_n``::

    delta_n = (J_{n-1} - J_n) / (J_{n-1} + eps)          relative loss change
    m_n     = beta * m_{n-1} + (1 - beta) * delta_n        momentum, m_0 = 0
    t_{n+1} = min(t_end, max(t_start + (t_end - t_start) * n / N,
                             t_n + alpha * sigmoid(m_n) * (1 - t_n)))

so ``t`` never falls behind the linear schedule and moves faster while the loss is falling.
After the first step there is no ``J_0``: ``delta_1`` is taken as 0 (momentum unchanged). The
paper's defaults: ``t_start = 0.4``, ``t_end = 1.0``, ``alpha = 5e-4``, ``beta = 0.99``.

The state is three plain floats, so it travels in a checkpoint's ``trainer_state.json``.
"""

from __future__ import annotations

import math
from typing import Any

#: Parameters a job spec may give for ``taid`` (the schedule), with their defaults.
TAID_SCHEDULE_PARAMS: dict[str, float] = {
    "t_start": 0.4,
    "t_end": 1.0,
    "alpha": 5e-4,
    "beta": 0.99,
}
RELATIVE_CHANGE_EPS = 1e-12


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class TaidSchedule:
    """TAID's adaptive ``t``; call :meth:`update` once per optimizer step.

    Args:
        total_steps: ``N``, the run's optimizer steps (the linear floor reaches ``t_end`` at N).
        t_start: first ``t``, in ``[0, 1]``.
        t_end: last ``t``, in ``[t_start, 1]``.
        alpha: adaptive update rate, in ``[0, 1]``.
        beta: momentum coefficient, in ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        total_steps: int,
        t_start: float = TAID_SCHEDULE_PARAMS["t_start"],
        t_end: float = TAID_SCHEDULE_PARAMS["t_end"],
        alpha: float = TAID_SCHEDULE_PARAMS["alpha"],
        beta: float = TAID_SCHEDULE_PARAMS["beta"],
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"taid total_steps must be >= 1, got {total_steps}")
        for name, value in (("t_start", t_start), ("t_end", t_end), ("alpha", alpha)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"taid parameter {name!r} must be in [0, 1], got {value!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"taid parameter 'beta' must be in [0, 1), got {beta!r}")
        if t_end < t_start:
            raise ValueError(f"taid parameter 't_end' ({t_end}) must be >= t_start ({t_start})")
        self.total_steps = total_steps
        self.t_start, self.t_end, self.alpha, self.beta = t_start, t_end, alpha, beta
        self.t = t_start
        self.momentum = 0.0
        self.previous_loss: float | None = None

    def update(self, step: int, loss: float) -> float:
        """Advance after optimizer step ``step`` (1-based) whose TAID objective was ``loss``.

        Returns:
            The ``t`` for the next step.
        """
        if not math.isfinite(loss):
            raise ValueError(f"taid schedule got a non-finite loss {loss!r} at step {step}")
        if self.previous_loss is not None:
            change = (self.previous_loss - loss) / (self.previous_loss + RELATIVE_CHANGE_EPS)
            self.momentum = self.beta * self.momentum + (1.0 - self.beta) * change
        progress = min(step / self.total_steps, 1.0)
        linear = self.t_start + (self.t_end - self.t_start) * progress
        adaptive = self.t + self.alpha * _sigmoid(self.momentum) * (1.0 - self.t)
        self.t = min(self.t_end, max(self.t_start, linear, adaptive))
        self.previous_loss = loss
        return self.t

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: ``{"t": float, "momentum": float, "previous_loss": float | None}``."""
        return {"t": self.t, "momentum": self.momentum, "previous_loss": self.previous_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        missing = {"t", "momentum", "previous_loss"} - set(state)
        if missing:
            raise ValueError(f"taid state lacks {sorted(missing)}")
        previous = state["previous_loss"]
        self.t = float(state["t"])
        self.momentum = float(state["momentum"])
        self.previous_loss = None if previous is None else float(previous)
