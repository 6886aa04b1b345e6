"""Dual-space knowledge distillation with cross-model attention, for different vocabularies.

Zhang et al. 2024, EMNLP, "Dual-Space Knowledge Distillation for Large Language Models" (DSKD):
the teacher's and the student's last hidden states are projected into each other's space, and
each model's own prediction head turns them into distributions over *its* vocabulary, so KD
never compares two vocabularies. Cross-model attention (CMA, the paper's mechanism for models
with different tokenizers) aligns the two token sequences. The equations are written out here,
after the paper and its released code, rather than cited by number.

Notation: ``B`` batch, ``S_s``/``S_t`` student/teacher sequence length, ``D_s``/``D_t`` hidden
sizes, ``V_s``/``V_t`` vocabularies. Tensors are *already shifted*, as everywhere in
:mod:`ml.distillation.losses`: position ``i`` holds the hidden state that predicts token
``i + 1``, its input-token embedding ``e^x_i`` and its target-token embedding ``e^y_i`` (the
embedding of ``labels[:, i]``). ``N(x) = x / std(x)`` with the standard deviation taken over
all valid teacher positions and features (a scalar).

CMA (``a`` = alignment scores, valid = label != -100 and mask)::

    Q = P_q([E^x_s ; E^y_s])              (B, S_s, 2 D_t)   P_q: Linear(2 D_s, 2 D_t)
    K = N([E^x_t ; E^y_t])                (B, S_t, 2 D_t)   (not projected, as in the paper)
    V = P_t2s(N(H_t) + N(E^y_t))          (B, S_t, D_s)     P_t2s: Linear(D_t, D_s)
    a = Q K^T / sqrt(2 D_t)               (B, S_s, S_t)
    A_t2s = softmax_t(a),  H_t2s = A_t2s V                  teacher -> student positions
    A_s2t = softmax_s(a^T), H_s2t = A_s2t P_s2t(H_s)        student -> teacher, P_s2t: Linear

Dual-space KD, per valid token, ``D`` any method of :func:`ml.distillation.losses.kd_loss`::

    t2s_ce     = CE(H_t2s W_s^T, y_s)                       trains P_q and P_t2s
    kd_student = T^2 D(softmax(sg(H_t2s W_s^T) / T), softmax(z_s / T))   on student tokens
    kd_teacher = T^2 D(softmax(z_t / T), softmax(H_s2t W_t^T / T))       on teacher tokens
    total      = t2s_ce + kd_student + kd_teacher           (unweighted, as the authors' code)

``W_s`` and ``W_t`` are detached (the heads turn projections into distributions; the student's
own head still learns through ``z_s``); every teacher tensor is detached. As in the authors'
code, ``kd_student`` is taken only on tokens where the projected teacher is right
(``argmax H_t2s W_s^T == y_s``; ``gate_on_t2s_correct=False`` drops the gate), and the recipe
mixes ``total`` with the student's CE: the paper's ``(1 - r) CE + r total`` with ``r = 0.5`` is
``alpha_ce = 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.distillation.divergences import token_divergence
from ml.distillation.losses import IGNORE_INDEX, hard_token_selection, resolve_kd_params

STD_EPS = 1e-6


@dataclass(frozen=True)
class CrossModelAttention:
    """The alignment of one batch; weights are float32 and 0 on masked positions.

    ``t2s_weights (B, S_s, S_t)``: rows of valid student positions sum to 1 over valid teacher
    positions (all-zero rows elsewhere). ``s2t_weights (B, S_t, S_s)``: the same, transposed
    roles. ``t2s_hidden (B, S_s, D_s)`` and ``s2t_hidden (B, S_t, D_t)`` the aligned states.
    """

    t2s_weights: Tensor
    s2t_weights: Tensor
    t2s_hidden: Tensor
    s2t_hidden: Tensor


@dataclass(frozen=True)
class DSKDOutput:
    """Sums over tokens, so the recipe divides once by the optimizer step's token count.

    ``loss_sum = t2s_ce_sum + student_space_kd_sum + teacher_space_kd_sum``; the first two sum
    over the ``n_tokens`` valid student tokens, the third over the ``n_teacher_tokens`` valid
    teacher tokens (as the authors' code, which divides all three by the same denominator).
    ``t2s_accuracy`` is the fraction of student tokens the projected teacher predicts right.
    """

    loss_sum: Tensor
    t2s_ce_sum: Tensor
    student_space_kd_sum: Tensor
    teacher_space_kd_sum: Tensor
    n_tokens: int
    t2s_accuracy: float
    n_teacher_tokens: int = 0
    attention: CrossModelAttention | None = None


def _masked_std(x: Tensor, mask: Tensor) -> Tensor:
    """Scalar unbiased std of ``x (B, S, D)`` over the rows where ``mask (B, S)``, >= eps.

    The paper normalises by ``x.std()`` over the whole tensor; restricting it to valid
    positions keeps padding from changing the loss.
    """
    keep = mask.unsqueeze(-1).expand_as(x)
    count = keep.sum()
    zeros = torch.zeros_like(x)
    mean = torch.where(keep, x, zeros).sum() / count.clamp(min=1)
    squares = torch.where(keep, (x - mean) ** 2, zeros).sum()
    return (squares / (count - 1).clamp(min=1)).sqrt().clamp(min=STD_EPS)


def _masked_softmax(scores: Tensor, row_mask: Tensor, col_mask: Tensor) -> Tensor:
    """Float32 softmax of ``scores (B, R, C)`` over valid columns; masked rows/cols are 0."""
    keep = row_mask.unsqueeze(-1) & col_mask.unsqueeze(-2)
    filled = scores.float().masked_fill(~keep, torch.finfo(torch.float32).min)
    weights = torch.softmax(filled, dim=-1)
    return torch.where(keep, weights, torch.zeros_like(weights))


class DSKDProjector(nn.Module):
    """The three trained projectors of DSKD-CMA (``P_q``, ``P_t2s``, ``P_s2t``; see the module).

    Plain ``nn.Linear`` layers with biases, so ``state_dict()`` is a flat dict of tensors that
    safetensors can store (``query.weight``, ``t2s.weight``, ``s2t.weight`` and biases). Train
    them with the student (same optimizer); they are not part of the saved student model.
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.query = nn.Linear(2 * student_dim, 2 * teacher_dim)
        self.t2s = nn.Linear(teacher_dim, student_dim)
        self.s2t = nn.Linear(student_dim, teacher_dim)

    def forward(
        self,
        *,
        student_hidden: Tensor,
        student_input_embeds: Tensor,
        student_target_embeds: Tensor,
        student_mask: Tensor,
        teacher_hidden: Tensor,
        teacher_input_embeds: Tensor,
        teacher_target_embeds: Tensor,
        teacher_mask: Tensor,
        scores_override: Tensor | None = None,
    ) -> CrossModelAttention:
        """Cross-model attention in both directions (module equations).

        Args:
            student_hidden: ``(B, S_s, D_s)`` student last hidden states (with gradient).
            student_input_embeds, student_target_embeds: ``(B, S_s, D_s)``, detached here.
            student_mask: ``(B, S_s)`` bool, the valid student positions.
            teacher_hidden, teacher_input_embeds, teacher_target_embeds: ``(B, S_t, D_t)``,
                detached here.
            teacher_mask: ``(B, S_t)`` bool, the valid teacher positions.
            scores_override: ``(B, S_s, S_t)`` alignment scores used instead of ``Q K^T /
                sqrt(2 D_t)`` (tests force a known alignment with it).
        """
        dtype = self.query.weight.dtype
        s_keep = student_mask.unsqueeze(-1)
        t_keep = teacher_mask.unsqueeze(-1)

        def clean(x: Tensor, keep: Tensor) -> Tensor:
            # Masked positions are zeroed so no value there (even inf) reaches the loss.
            return torch.where(keep, x.detach().float(), torch.zeros((), device=x.device))

        t_input = clean(teacher_input_embeds, t_keep)
        t_target = clean(teacher_target_embeds, t_keep)
        t_hidden = clean(teacher_hidden, t_keep)
        t_index = torch.cat([t_input, t_target], dim=-1)
        keys = t_index / _masked_std(t_index, teacher_mask)
        values_in = t_hidden / _masked_std(t_hidden, teacher_mask)
        values_in = values_in + t_target / _masked_std(t_target, teacher_mask)
        values = self.t2s(values_in.to(dtype)).float()
        if scores_override is None:
            s_index = torch.cat(
                [clean(student_input_embeds, s_keep), clean(student_target_embeds, s_keep)], -1
            )
            queries = self.query(s_index.to(dtype)).float()
            scores = queries @ keys.transpose(-1, -2) / math.sqrt(2 * self.teacher_dim)
        else:
            scores = scores_override.float()
        t2s_weights = _masked_softmax(scores, student_mask, teacher_mask)
        s2t_weights = _masked_softmax(scores.transpose(-1, -2), teacher_mask, student_mask)
        s_hidden = torch.where(s_keep, student_hidden, torch.zeros_like(student_hidden))
        s2t_values = self.s2t(s_hidden.to(dtype)).float()
        return CrossModelAttention(
            t2s_weights=t2s_weights,
            s2t_weights=s2t_weights,
            t2s_hidden=t2s_weights @ values,
            s2t_hidden=s2t_weights @ s2t_values,
        )


@torch.no_grad()
def token_embeddings(embedding: nn.Module, ids: Tensor) -> Tensor:
    """``(B, S) -> (B, S, D)`` detached embeddings of token ids; -100 reads token 0 (masked
    later). Pass ``model.get_input_embeddings()`` and input ids or shifted labels."""
    out: Tensor = embedding(torch.where(ids == IGNORE_INDEX, torch.zeros_like(ids), ids))
    return out


def _sum_where(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, values.float(), torch.zeros((), device=values.device)).sum()


def dskd_loss(
    projector: DSKDProjector,
    *,
    student_hidden: Tensor,
    student_input_embeds: Tensor,
    student_target_embeds: Tensor,
    student_labels: Tensor,
    student_head_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_input_embeds: Tensor,
    teacher_target_embeds: Tensor,
    teacher_labels: Tensor,
    teacher_head_weight: Tensor,
    student_mask: Tensor | None = None,
    teacher_mask: Tensor | None = None,
    student_logits: Tensor | None = None,
    teacher_logits: Tensor | None = None,
    method: str = "fkl",
    temperature: float = 1.0,
    gate_on_t2s_correct: bool = True,
    return_attention: bool = False,
    scores_override: Tensor | None = None,
    **params: float,
) -> DSKDOutput:
    """DSKD with cross-model attention for a student and a teacher with different vocabularies.

    Args:
        projector: the trained :class:`DSKDProjector` for ``(D_s, D_t)``.
        student_hidden: ``(B, S_s, D_s)`` the student's last (post-norm) hidden states.
        student_input_embeds: ``(B, S_s, D_s)`` input embeddings of the student's input ids.
        student_target_embeds: ``(B, S_s, D_s)`` input embeddings of its target ids (labels).
        student_labels: ``(B, S_s)`` long, the student's target ids, -100 ignored.
        student_head_weight: ``(V_s, D_s)`` the student's lm head.
        teacher_hidden, teacher_input_embeds, teacher_target_embeds: ``(B, S_t, D_t)``, alike.
        teacher_labels: ``(B, S_t)`` long, the teacher's target ids, -100 ignored.
        teacher_head_weight: ``(V_t, D_t)`` the teacher's lm head.
        student_mask, teacher_mask: ``(B, S)`` bool, padding + response masks; ANDed with
            ``labels != -100`` (None: the labels alone). Both the attention and the sums use
            only positions valid on both counts, in sequences with a valid position on both
            sides.
        student_logits: ``(B, S_s, V_s)`` the student's logits (with gradient); None computes
            ``student_hidden @ W_s^T``.
        teacher_logits: ``(B, S_t, V_t)``; None computes ``teacher_hidden @ W_t^T``.
        method, temperature, params: the divergence ``D`` and its parameters, as for
            :func:`ml.distillation.losses.kd_loss` (``T^2`` included).
        gate_on_t2s_correct: student-space KD only where the projected teacher is right.
        return_attention: keep the :class:`CrossModelAttention` in the output.
        scores_override: ``(B, S_s, S_t)`` alignment scores replacing ``Q K^T / sqrt(2 D_t)``.

    Returns:
        :class:`DSKDOutput` of float32 scalar sums; all 0 (not NaN) when nothing is valid.
    """
    resolved = resolve_kd_params(method, params)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s_valid = student_labels != IGNORE_INDEX
    t_valid = teacher_labels != IGNORE_INDEX
    if student_mask is not None:
        s_valid = s_valid & student_mask.bool()
    if teacher_mask is not None:
        t_valid = t_valid & teacher_mask.bool()
    # A sequence counts only if both sides have a valid position: the other side has nothing
    # to attend to otherwise, and a loss without any gradient path is no signal.
    both = (s_valid.any(dim=-1) & t_valid.any(dim=-1)).unsqueeze(-1)
    s_valid, t_valid = s_valid & both, t_valid & both
    if student_hidden.shape[:-1] != s_valid.shape or teacher_hidden.shape[:-1] != t_valid.shape:
        raise ValueError(
            f"hidden states {tuple(student_hidden.shape)}, {tuple(teacher_hidden.shape)} do not "
            f"match labels {tuple(student_labels.shape)}, {tuple(teacher_labels.shape)}"
        )
    attention = projector(
        student_hidden=student_hidden,
        student_input_embeds=student_input_embeds,
        student_target_embeds=student_target_embeds,
        student_mask=s_valid,
        teacher_hidden=teacher_hidden,
        teacher_input_embeds=teacher_input_embeds,
        teacher_target_embeds=teacher_target_embeds,
        teacher_mask=t_valid,
        scores_override=scores_override,
    )
    w_s, w_t = student_head_weight.detach(), teacher_head_weight.detach()
    t2s_logits = F.linear(attention.t2s_hidden.to(w_s.dtype), w_s).float()
    s2t_logits = F.linear(attention.s2t_hidden.to(w_t.dtype), w_t).float()
    if student_logits is None:
        student_logits = F.linear(student_hidden, student_head_weight)
    if teacher_logits is None:
        teacher_logits = F.linear(teacher_hidden.detach(), w_t)
    teacher_logits = teacher_logits.detach()

    safe_labels = torch.where(s_valid, student_labels, torch.zeros_like(student_labels))
    t2s_ce = F.cross_entropy(t2s_logits.transpose(1, 2), safe_labels, reduction="none")
    t2s_correct = (t2s_logits.argmax(dim=-1) == student_labels) & s_valid
    kd_mask = s_valid & t2s_correct if gate_on_t2s_correct else s_valid
    student_kd = _divergence_sum(
        student_logits, t2s_logits.detach(), kd_mask, method, temperature, resolved
    )
    teacher_kd = _divergence_sum(s2t_logits, teacher_logits, t_valid, method, temperature, resolved)
    t2s_ce_sum = _sum_where(t2s_ce, s_valid)
    n_tokens = int(s_valid.sum())
    return DSKDOutput(
        loss_sum=t2s_ce_sum + student_kd + teacher_kd,
        t2s_ce_sum=t2s_ce_sum,
        student_space_kd_sum=student_kd,
        teacher_space_kd_sum=teacher_kd,
        n_tokens=n_tokens,
        t2s_accuracy=int(t2s_correct.sum()) / n_tokens if n_tokens else 0.0,
        n_teacher_tokens=int(t_valid.sum()),
        attention=attention if return_attention else None,
    )


def _divergence_sum(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    method: str,
    temperature: float,
    params: dict[str, float],
) -> Tensor:
    """Sum of ``T^2 D(p_teacher, q_student)`` over ``mask (B, S)`` -> float32 scalar."""
    hard = None
    if method == "atkd":
        hard = hard_token_selection(teacher_logits, mask, temperature=temperature, params=params)
    per_token = token_divergence(
        student_logits,
        teacher_logits,
        method=method,
        temperature=temperature,
        params=params,
        hard=hard,
    )
    return _sum_where(per_token, mask)
