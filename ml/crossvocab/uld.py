"""Universal Logit Distillation (ULD) for a teacher and a student with different vocabularies.

Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation
Loss for LLMs" (arXiv:2402.12030). The Wasserstein-1 distance between the two next-token
distributions needs a transport cost between a teacher token and a student token, which two
vocabularies do not provide; under the paper's uniform-cost assumption it has a closed form
(their Eq. 6-7): sort each distribution's probabilities in decreasing order, pad the smaller
vocabulary with zeros, and sum the absolute differences rank by rank::

    ULD(p, q) = sum_r | p_sorted[r] - q_sorted[r] |,   r = 1 .. max(V_s, V_t)

Positions are aligned as in the paper: the ``k``-th response position of the student is paired
with the ``k``-th response position of the teacher, for ``k`` up to the shorter response; there is
no token alignment. The loss is invariant to any permutation of either vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum")


def kth_positions(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Where each row's ``k``-th True is: ``mask (B, S)`` -> ``index (B, K)``, ``valid (B, K)``.

    ``K`` is the largest count of True in a row (at least 1); ``index[b, k]`` is the position of
    row ``b``'s ``k``-th True (0 where ``valid`` is False).
    """
    mask = mask.bool()
    counts = mask.sum(dim=1)
    width = max(int(counts.max().item()) if mask.numel() else 0, 1)
    index = torch.zeros((mask.shape[0], width), dtype=torch.long, device=mask.device)
    rows, positions = mask.nonzero(as_tuple=True)
    ranks = mask.long().cumsum(dim=1)[rows, positions] - 1
    index[rows, ranks] = positions
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return index, valid


def _gather_positions(logits: Tensor, index: Tensor) -> Tensor:
    """``logits (B, S, V)``, ``index (B, K)`` -> ``(B, K, V)``."""
    return logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1]))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float32 at least (bf16/fp16 softmax loses the tail), float64 kept for gradcheck.
    return torch.promote_types(dtype, torch.float32)


def sorted_probability_distance(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """ULD per position: ``(..., V_s)`` and ``(..., V_t)`` logits (already divided by ``T``)
    -> ``(...)``, the sum of absolute differences of the descending-sorted probabilities with
    the smaller vocabulary zero-padded."""
    q = F.softmax(student_logits.to(_compute_dtype(student_logits.dtype)), dim=-1)
    p = F.softmax(teacher_logits.to(_compute_dtype(teacher_logits.dtype)), dim=-1)
    q_sorted = q.sort(dim=-1, descending=True).values
    p_sorted = p.sort(dim=-1, descending=True).values
    width = max(q_sorted.shape[-1], p_sorted.shape[-1])
    q_sorted = F.pad(q_sorted, (0, width - q_sorted.shape[-1]))
    p_sorted = F.pad(p_sorted, (0, width - p_sorted.shape[-1]))
    return (q_sorted - p_sorted).abs().sum(dim=-1)


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_mask: Tensor,
    teacher_mask: Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Universal Logit Distillation loss (Boizard et al. 2024, Eq. 6-7; see the module doc).

    Both sides are given once-shifted, as the same-vocabulary losses: position ``s`` of the
    logits predicts token ``s + 1``, and a mask is True where that next token is a response
    token (``labels[:, 1:] != -100``).

    Args:
        student_logits: ``(B, S_s, V_s)``, any float dtype (softmax in float32 or wider).
        teacher_logits: ``(B, S_t, V_t)``; ``S_t`` and ``V_t`` may differ from the student's.
        student_mask: ``(B, S_s)`` bool, the student's response positions.
        teacher_mask: ``(B, S_t)`` bool, the teacher's response positions.
        temperature: ``T > 0``; both sides use ``softmax(z / T)`` and each pair's value is
            multiplied by ``T^2`` like every KD loss here (``T = 1``, the paper's setting,
            leaves it unchanged).
        reduction: ``"mean"`` over aligned pairs (0 if none) or ``"sum"``.

    The ``k``-th True of ``student_mask`` is paired with the ``k``-th True of ``teacher_mask``
    in the same row, for ``k < min(count_s, count_t)``; unpaired positions are ignored.

    Returns:
        Scalar tensor (float32, or float64 for float64 inputs).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.dim() != 3 or teacher_logits.dim() != 3:
        raise ValueError("logits must be (batch, seq, vocab) on both sides")
    if student_mask.shape != student_logits.shape[:2]:
        raise ValueError(f"student mask {tuple(student_mask.shape)} must be (batch, seq_s)")
    if teacher_mask.shape != teacher_logits.shape[:2]:
        raise ValueError(f"teacher mask {tuple(teacher_mask.shape)} must be (batch, seq_t)")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError("student and teacher batches differ in size")
    student_index, student_valid = kth_positions(student_mask)
    teacher_index, teacher_valid = kth_positions(teacher_mask)
    width = min(student_index.shape[1], teacher_index.shape[1])
    valid = student_valid[:, :width] & teacher_valid[:, :width]
    student = _gather_positions(student_logits, student_index[:, :width])
    teacher = _gather_positions(teacher_logits, teacher_index[:, :width])
    per_pair = sorted_probability_distance(student / temperature, teacher / temperature)
    per_pair = per_pair * temperature**2
    total = torch.where(valid, per_pair, torch.zeros_like(per_pair)).sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)
