"""Token-level distillation and cross-entropy losses.

Both losses take tensors that are *already aligned*: the recipe shifts once
(``logits[:, :-1]`` against ``labels[:, 1:]``, teacher logits likewise) and passes the same
shifted tensors to :func:`kd_loss` and :func:`ce_loss`. Neither function shifts.

Reductions: ``"mean"`` divides by the number of unmasked tokens (0 when there are none, never
NaN); ``"sum"`` returns the plain sum, so gradient accumulation can add micro-batch sums and
divide once by the optimizer step's total token count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KD_METHODS: tuple[str, ...] = ("fkl",)
REDUCTIONS = ("mean", "sum")
IGNORE_INDEX = -100


def _reduce(per_token: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Sum or mean of ``per_token (batch, seq)`` over ``mask (batch, seq)`` -> scalar."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)


def forward_kl_per_token(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float
) -> Tensor:
    """``KL(p_T || q_S)`` per position, summed over the vocabulary.

    Args:
        student_logits: ``(batch, seq, vocab)``.
        teacher_logits: ``(batch, seq, vocab)``.
        temperature: softens both distributions, ``p = softmax(z / T)``.

    Returns:
        ``(batch, seq)`` float32: ``sum_v p_T(v) (log p_T(v) - log q_S(v))``.
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    teacher_probs = teacher_log_probs.exp()
    # Written out rather than with F.kl_div, whose argument order is the reverse of the paper's.
    return (teacher_probs * (teacher_log_probs - student_log_probs)).sum(dim=-1)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    method: str,
    mask: Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Distillation loss between student and teacher next-token distributions.

    ``fkl`` is the forward KL of Hinton et al. 2015, "Distilling the Knowledge in a Neural
    Network" (Sec. 2): ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` per token; the
    ``T^2`` factor keeps gradient magnitudes comparable across temperatures.

    Args:
        student_logits: ``(batch, seq, vocab)``, any float dtype (computed in float32).
        teacher_logits: ``(batch, seq, vocab)``, same shape; gradients are not needed.
        method: one of :data:`KD_METHODS`.
        mask: ``(batch, seq)`` bool, True on tokens that count (response tokens).
        temperature: ``T > 0``.
        reduction: ``"mean"`` over unmasked tokens (0 if none) or ``"sum"``.

    Returns:
        Scalar float32 tensor.
    """
    if method not in KD_METHODS:
        raise ValueError(f"unknown KD method {method!r}; allowed: {', '.join(KD_METHODS)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (batch, seq) of the logits")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    per_token = forward_kl_per_token(student_logits, teacher_logits, temperature)
    return _reduce(per_token * temperature**2, mask.bool(), reduction)


def ce_loss(logits: Tensor, labels: Tensor, *, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits (batch, seq, vocab)`` against ``labels (batch, seq)``.

    Labels equal to -100 are ignored. The caller has already shifted (see the module
    docstring). Computed in float32; ``"mean"`` is over non-ignored tokens (0 if none).

    Returns:
        Scalar float32 tensor.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).reshape(labels.shape)
    return _reduce(per_token, labels != IGNORE_INDEX, reduction)
