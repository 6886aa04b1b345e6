"""Sparse teacher targets (top-k or importance-sampled) and the distillation loss against them.

A dense KD target costs ``vocab`` floats per response token; these keep ``K << vocab`` pairs
``(token id, weight)`` per token so a teacher's distribution can be stored once and reused
(see :mod:`ml.distillation.teacher_cache`). Two constructions:

``topk``
    The teacher's ``k`` most likely tokens with their probabilities ``p_k``. The loss
    renormalises over the kept set, ``p~ = p_k / sum(p_k)``. This is the *biased* variant
    that Anshumann et al. 2025 analyse: the tail mass is dropped and the kept mass is
    inflated, so the student is pushed to over-confidence on the head.

``sampled``
    The unbiased "Random Sampling Knowledge Distillation" (RS-KD) of Anshumann et al. 2025,
    "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs" (ACL 2025,
    arXiv:2503.16870): draw ``N`` tokens with replacement from a proposal ``r``, keep the
    unique ids with weights ``w_j = (count_j / N) * p(y_j) / r(y_j)``. For any ``f``,
    ``E[sum_j w_j f(y_j)] = sum_y r(y) * p(y) / r(y) * f(y) = E_p[f]``, so the sparse
    cross-entropy below is an unbiased estimate of ``CE(p, q)`` and its gradient of the dense
    forward-KL gradient. Here ``r ~ p^(1 / proposal_temperature)``; ``r = p`` at 1, and then
    the weights are plain frequencies summing to 1.

Shapes: ``n`` = response positions (flattened over examples), ``V`` = vocabulary,
``K`` = kept ids per position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SPARSE_MODES = ("topk", "sampled")
REDUCTIONS = ("mean", "sum")


def topk_targets(teacher_logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The teacher's ``min(k, V)`` most likely tokens and their (unrenormalised) probabilities.

    Args:
        teacher_logits: ``(n, V)`` any float dtype; softmax is taken in float32.
        k: tokens to keep per position, ``>= 1``.

    Returns:
        ``token_ids (n, K)`` int64 in decreasing probability order and
        ``probs (n, K)`` float32 = ``softmax(teacher_logits)`` at those ids, ``K = min(k, V)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    log_probs = torch.log_softmax(teacher_logits.float(), dim=-1)
    values, ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
    return ids, values.exp()


def sampled_targets(
    teacher_logits: Tensor,
    samples: int,
    *,
    proposal_temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Importance-sampled sparse targets (RS-KD of Anshumann et al. 2025), one row per position.

    Draws ``samples`` ids per row with replacement from ``r ~ p^(1/proposal_temperature)`` and
    returns the unique ids with ``w = (count / samples) * p / r``; ``sum_j w_j f(y_j)`` is then
    an unbiased estimate of ``E_p[f]`` (module docstring).

    Args:
        teacher_logits: ``(n, V)``; ``p = softmax`` in float32.
        samples: draws per position ``N >= 1``.
        proposal_temperature: ``> 0``; above 1 flattens the proposal (more tail coverage).
        generator: on the logits' device; makes the draw reproducible.

    Returns:
        ``token_ids (n, K)`` int64 and ``weights (n, K)`` float32, ``K`` = the largest number of
        unique ids in any row (``<= min(N, V)``); shorter rows are padded with id 0, weight 0.
        Ids within a row are increasing.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if proposal_temperature <= 0:
        raise ValueError(f"proposal_temperature must be > 0, got {proposal_temperature}")
    n = teacher_logits.shape[0]
    log_p = torch.log_softmax(teacher_logits.float(), dim=-1)
    if n == 0:
        empty = torch.zeros((0, 0), device=teacher_logits.device)
        return empty.long(), empty
    if proposal_temperature == 1.0:
        log_r = log_p  # exactly r = p, so p / r == 1 with no rounding
    else:
        log_r = torch.log_softmax(log_p / proposal_temperature, dim=-1)
    draws = torch.multinomial(log_r.exp(), samples, replacement=True, generator=generator)
    ordered, _ = draws.sort(dim=-1)  # (n, N): equal ids become runs
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = starts.long().cumsum(dim=-1) - 1  # (n, N): which unique id each draw belongs to
    width = int(slot[:, -1].max()) + 1
    token_ids = torch.zeros((n, width), dtype=torch.long, device=ordered.device)
    token_ids.scatter_(1, slot, ordered)  # every draw of a run writes the same id
    counts = torch.zeros((n, width), dtype=torch.float32, device=ordered.device)
    counts.scatter_add_(1, slot, torch.ones_like(ordered, dtype=torch.float32))
    ratio = (log_p.gather(1, token_ids) - log_r.gather(1, token_ids)).exp()
    weights = torch.where(counts > 0, counts / samples * ratio, torch.zeros_like(counts))
    return token_ids, weights


def sparse_kd_loss(
    student_logits_at_positions: Tensor,
    token_ids: Tensor,
    weights: Tensor,
    *,
    mode: str,
    temperature: float = 1.0,
    reduction: str = "sum",
    teacher_entropy: Tensor | None = None,
) -> Tensor:
    """Forward-KL distillation against sparse teacher targets, per response position.

    ``q = softmax(z_s / T)`` is the student's *full* softmax over the vocabulary, gathered at
    the kept ids (the normaliser sees every token, so mass on dropped tokens is penalised).

    * ``topk``: ``T^2 * sum_k p~_k (log p~_k - log q_k)`` with ``p~`` the stored teacher
      probabilities raised to ``1/T`` and renormalised over the kept set. This is exact
      tempering: ``softmax(z_t / T) ~ p^(1/T)``, so with ``K = V`` it equals the dense
      ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` of Hinton et al. 2015 (Sec. 2), and it is
      0 for identical distributions. With ``K < V`` and a student equal to the teacher the value
      is ``-log(kept teacher mass) > 0`` (the biased top-k variant; module docstring).
    * ``sampled``: ``-sum_j w_j log q(y_j)``, an unbiased estimate of ``CE(p, q)`` whose
      gradient is, in expectation, the gradient of ``KL(p || q)`` (RS-KD,
      Anshumann et al. 2025). Its *value* is a cross-entropy, not a KL, unless
      ``teacher_entropy`` (the exact ``H(p)`` per position, stored at capture) is given: then
      ``CE_hat - H(p)`` is an unbiased KL estimate. Only ``T = 1`` is accepted: the weights
      estimate expectations under the captured ``p``; an unbiased estimate under
      ``softmax(z_t / T)`` would need its normaliser, which the sparse sample does not carry.

    Args:
        student_logits_at_positions: ``(n, V)`` student logits at the response positions, in
            the order the targets were read (see ``TeacherCacheReader.targets``).
        token_ids: ``(n, K)`` integer ids into ``V``.
        weights: ``(n, K)`` float; padding slots have weight 0.
        mode: ``"topk"`` or ``"sampled"``, as captured.
        temperature: ``T > 0`` (``sampled``: 1 only).
        reduction: ``"sum"`` over positions, or ``"mean"`` (0 when ``n == 0``, never NaN).
        teacher_entropy: optional ``(n,)`` float, ``sampled`` mode only.

    Returns:
        Scalar float32 tensor.
    """
    if mode not in SPARSE_MODES:
        raise ValueError(f"mode must be one of {SPARSE_MODES}, got {mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = student_logits_at_positions.shape[0]
    if token_ids.shape != weights.shape or token_ids.shape[0] != n or token_ids.ndim != 2:
        raise ValueError(
            f"student logits {tuple(student_logits_at_positions.shape)}, token_ids "
            f"{tuple(token_ids.shape)} and weights {tuple(weights.shape)} must be (n, V), "
            "(n, K), (n, K)"
        )
    log_q = F.log_softmax(student_logits_at_positions.float() / temperature, dim=-1)
    log_q_kept = log_q.gather(1, token_ids.long().to(log_q.device))
    weights = weights.float().to(log_q.device)
    if mode == "topk":
        if teacher_entropy is not None:
            raise ValueError("teacher_entropy is for sampled mode; topk computes its own")
        # p^(1/T) renormalised, in log space; zero weights stay exactly zero.
        log_w = torch.where(weights > 0, weights.log() / temperature, float("-inf"))
        target = torch.softmax(log_w, dim=-1).nan_to_num(0.0)
        per_position = (torch.xlogy(target, target) - target * log_q_kept).sum(dim=-1)
        per_position = per_position * temperature**2
    else:
        if temperature != 1.0:
            raise ValueError(
                "sampled targets support temperature 1 only (an unbiased tempered estimate "
                f"needs the teacher's normaliser at T); got {temperature}"
            )
        per_position = -(weights * log_q_kept).sum(dim=-1)
        if teacher_entropy is not None:
            if teacher_entropy.shape != (n,):
                raise ValueError(
                    f"teacher_entropy must be ({n},), got {tuple(teacher_entropy.shape)}"
                )
            per_position = per_position - teacher_entropy.float().to(log_q.device)
    total = per_position.sum()
    if reduction == "sum":
        return total
    return total / max(n, 1)
