"""Token-level distillation and cross-entropy losses.

Both losses take tensors that are *already aligned*: the recipe shifts once
(``logits[:, :-1]`` against ``labels[:, 1:]``, teacher logits likewise) and passes the same
shifted tensors to :func:`kd_loss` and :func:`ce_loss`. Neither function shifts.

Reductions: ``"mean"`` divides by the number of unmasked tokens (0 when there are none, never
NaN); ``"sum"`` returns the plain sum, so gradient accumulation can add micro-batch sums and
divide once by the optimizer step's total token count.

This module owns the method names, their parameters (defaults, ranges, validation) and the
reductions; the per-token formulas, with their papers, live in
:mod:`ml.distillation.divergences`, shared with the chunked path
(:mod:`ml.distillation.chunked`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ml.distillation.divergences import atkd_uncertainty, select_hard_tokens, token_divergence
from ml.distillation.taid import TAID_SCHEDULE_PARAMS, TaidSchedule

KD_METHODS: tuple[str, ...] = ("fkl", "rkl", "jsd", "tvd", "skl", "srkl", "akl", "atkd", "taid")
REDUCTIONS = ("mean", "sum")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: default (None = required), closed/open bounds, integer or not."""

    default: float | None
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        kind = "an integer" if self.integer else "a number"
        return f"{kind} in {left}{self.low}, {self.high}{right}"

    def _error(self, method: str, name: str, value: object) -> ValueError:
        return ValueError(f"{method} parameter {name!r} must be {self.describe()}, got {value!r}")

    def check(self, method: str, name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(method, name, value)
        number = float(value)
        inside = not math.isnan(number)
        inside = inside and (number > self.low if self.low_open else number >= self.low)
        inside = inside and (number < self.high if self.high_open else number <= self.high)
        if self.integer:
            inside = inside and math.isfinite(number) and number == int(number)
        if not inside:
            raise self._error(method, name, value)
        return number


_UNIT = ParamSpec(None, 0.0, 1.0)
#: Parameters ``kd_loss`` accepts per method, with defaults and ranges.
KD_PARAMS: dict[str, dict[str, ParamSpec]] = {
    "fkl": {},
    "rkl": {},
    "tvd": {},
    "jsd": {"beta": replace(_UNIT, default=0.5)},
    "skl": {"alpha": replace(_UNIT, default=0.1)},
    "srkl": {"alpha": replace(_UNIT, default=0.1)},
    "akl": {"mu": replace(_UNIT, default=0.5)},
    "atkd": {
        "k": ParamSpec(50, 1, math.inf, integer=True),
        "ratio": ParamSpec(0.5, 0.0, 1.0, low_open=True),
        "lam": replace(_UNIT, default=0.2),
    },
    "taid": {"t": _UNIT},  # required: the recipe's TaidSchedule supplies it every step
}


def _allowed(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "none"


def resolve_kd_params(method: str, params: Mapping[str, object]) -> dict[str, float]:
    """Validate ``kd_loss`` parameters for ``method`` and fill in the defaults.

    Raises:
        ValueError: unknown method (naming the allowed ones), unknown parameter (naming the
            method's parameters), missing required parameter or a value out of range.
    """
    if method not in KD_METHODS:
        raise ValueError(f"unknown KD method {method!r}; allowed: {', '.join(KD_METHODS)}")
    specs = KD_PARAMS[method]
    for name in params:
        if name not in specs:
            raise ValueError(
                f"unknown parameter {name!r} for KD method {method!r}; allowed: {_allowed(specs)}"
            )
    resolved: dict[str, float] = {}
    for name, spec in specs.items():
        if name in params:
            resolved[name] = spec.check(method, name, params[name])
        elif spec.default is None:
            raise ValueError(f"KD method {method!r} needs parameter {name!r}")
        else:
            resolved[name] = spec.default
    return resolved


def validate_loss_params(method: str, params: Mapping[str, object]) -> None:
    """Check a job spec's ``method.loss`` and its method-specific ``params``.

    The same keys as :func:`kd_loss` takes, except for ``taid``, whose spec carries the
    schedule (``t_start``, ``t_end``, ``alpha``, ``beta``: see
    :class:`ml.distillation.taid.TaidSchedule`) rather than ``t``. ``"ce"`` takes none.
    ``temperature`` and ``alpha_ce`` are recipe fields, not method parameters.

    Raises:
        ValueError: naming the unknown method or the bad key.
    """
    if method == "ce":
        if params:
            raise ValueError(f"loss 'ce' takes no parameters; got {_allowed(params)}")
        return
    if method == "taid":
        for name in params:
            if name not in TAID_SCHEDULE_PARAMS:
                raise ValueError(
                    f"unknown parameter {name!r} for KD method 'taid'; allowed: "
                    f"{_allowed(TAID_SCHEDULE_PARAMS)}"
                )
        TaidSchedule(total_steps=1, **{k: _number(k, v) for k, v in params.items()})
        return
    if method not in KD_METHODS:
        raise ValueError(f"unknown loss {method!r}; allowed: ce, {', '.join(KD_METHODS)}")
    resolve_kd_params(method, params)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"taid parameter {name!r} must be a number, got {value!r}")
    return float(value)


def _reduce(per_token: Tensor, reduction: str) -> Tensor:
    """Sum or mean of ``per_token (tokens,)``, the values of the unmasked tokens only -> scalar
    (0 when there are none)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / max(per_token.numel(), 1)


def hard_token_selection(
    teacher_logits: Tensor, mask: Tensor, *, temperature: float, params: Mapping[str, float]
) -> Tensor:
    """ATKD's hard-to-learn tokens of one call: ``(..., vocab), (...) -> (...)`` bool.

    The selection ranks the tokens of the whole call (the ``ratio`` most uncertain unmasked
    ones), so ``atkd`` is the one method whose micro-batch sums do not add up to the big
    batch's sum unless ``ratio == 1``.
    """
    with torch.no_grad():
        log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        uncertainty = atkd_uncertainty(log_p, k=int(params["k"]))
    return select_hard_tokens(uncertainty, mask, ratio=params["ratio"])


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    method: str,
    mask: Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    **params: float,
) -> Tensor:
    """Distillation loss between student and teacher next-token distributions.

    Per token, with ``p = softmax(z_teacher / T)`` and ``q = softmax(z_student / T)``, the
    value is ``T^2 * D(p, q)`` (the ``T^2`` of Hinton et al. 2015, Sec. 2, keeps gradient
    magnitudes comparable across temperatures; applied to every method). ``D`` per method
    (definitions, papers and equations in :mod:`ml.distillation.divergences`):

    ====== ============================================================ ====================
    method D(p, q)                                                      params (default)
    ====== ============================================================ ====================
    fkl    KL(p || q)                                                   -
    rkl    KL(q || p)                                                   -
    jsd    b KL(p || m) + (1-b) KL(q || m), m = b p + (1-b) q;          beta in [0,1] (0.5)
           b=0 -> KL(p || q), b=1 -> KL(q || p) (TRL's convention)
    tvd    0.5 sum_v |p_v - q_v|                                        -
    skl    KL(p || a p + (1-a) q)                                       alpha in [0,1] (0.1)
    srkl   KL(q || a q + (1-a) p)                                       alpha in [0,1] (0.1)
    akl    head/tail-gap weighted FKL + RKL                             mu in [0,1] (0.5)
    atkd   top-k target / diverse split, hard tokens get both parts    k >= 1 (50),
                                                                        ratio in (0,1] (0.5),
                                                                        lam in [0,1] (0.2)
    taid   KL(r_t || q), r_t = softmax((1-t) sg(z_s/T) + t z_t/T)       t in [0,1] (required)
    ====== ============================================================ ====================

    Args:
        student_logits: ``(batch, seq, vocab)``, any float dtype (computed in float32).
        teacher_logits: ``(batch, seq, vocab)``, same shape; gradients are not needed.
        method: one of :data:`KD_METHODS`.
        mask: ``(batch, seq)`` bool, True on tokens that count (response tokens).
        temperature: ``T > 0``.
        reduction: ``"mean"`` over unmasked tokens (0 if none) or ``"sum"``.
        **params: the method's parameters (see :data:`KD_PARAMS`).

    Returns:
        Scalar float32 tensor.
    """
    resolved = resolve_kd_params(method, params)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (batch, seq) of the logits")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    mask = mask.bool()
    hard = None
    if method == "atkd":
        hard = hard_token_selection(teacher_logits, mask, temperature=temperature, params=resolved)
        hard = hard[mask]
    # Only the unmasked positions go through the softmaxes: prompt and padding tokens cost
    # nothing (about half of an instruction batch; bench/throughput.py measured the difference).
    per_token = token_divergence(
        student_logits[mask],
        teacher_logits[mask],
        method=method,
        temperature=temperature,
        params=resolved,
        hard=hard,
    )
    return _reduce(per_token, reduction)


def ce_loss(logits: Tensor, labels: Tensor, *, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits (batch, seq, vocab)`` against ``labels (batch, seq)``.

    Labels equal to -100 are ignored. The caller has already shifted (see the module
    docstring). Computed in float32; ``"mean"`` is over non-ignored tokens (0 if none).

    Returns:
        Scalar float32 tensor.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    keep = labels != IGNORE_INDEX  # as in kd_loss: ignored positions skip the softmax
    per_token = F.cross_entropy(logits[keep].float(), labels[keep], reduction="none")
    return _reduce(per_token, reduction)
