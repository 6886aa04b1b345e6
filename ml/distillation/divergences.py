"""Per-token divergences between a teacher and a student next-token distribution.

Every function here works on log-probabilities already computed in float32 at temperature
``T``: ``log_p = log_softmax(z_teacher / T)`` and ``log_q = log_softmax(z_student / T)``, both
``(..., vocab)`` (``...`` is ``(batch, seq)`` on the plain path and ``(tokens,)`` on the
chunked path). Each returns ``(...)`` float32 — one value per token, no mask, no reduction and
no ``T^2`` factor: :func:`ml.distillation.losses.kd_loss` and
:func:`ml.distillation.chunked.chunked_kd_loss` both call :func:`token_divergence`, which adds
``T^2`` and is the one place the methods are dispatched, so both paths compute the same thing.

Notation: ``p`` = teacher distribution, ``q`` = student distribution, ``KL(a || b) =
sum_v a_v (log a_v - log b_v)`` with ``0 log 0 = 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

AKL_EPS = 1e-12


def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``KL(a || b)`` over the last dim from log-probabilities ``(..., vocab)`` -> ``(...)``.

    Entries with ``a_v = 0`` contribute 0 (and a zero, not NaN, gradient). ``F.kl_div`` takes
    its arguments the other way round from the papers (``input`` is ``log b``); it is used only
    when ``log_a`` has no ``-inf`` (then ``a_v = 0`` only by underflow, where its ``0 * finite``
    is already 0): it is about 20 % faster than the guarded form (bench/throughput.py), which
    handles the rest.
    """
    if not bool(torch.isneginf(log_a).any()):
        return F.kl_div(log_b, log_a, log_target=True, reduction="none").sum(dim=-1)
    a = log_a.exp()
    difference = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * difference).sum(dim=-1)


def log_mixture(weight: float, log_a: Tensor, log_b: Tensor) -> Tensor:
    """``log(weight * a + (1 - weight) * b)`` computed stably in log space, ``weight in [0, 1]``."""
    if weight == 0.0:
        return log_b
    if weight == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


def forward_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``KL(p || q)``: Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
    Sec. 2 (the soft-target objective; its ``T^2`` is applied in :func:`token_divergence`)."""
    return kl(log_p, log_q)


def reverse_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``KL(q || p)``: the reverse KLD objective of MiniLLM (Gu et al. 2024, ICLR, "MiniLLM:
    Knowledge Distillation of Large Language Models"), here per token under teacher forcing."""
    return kl(log_q, log_p)


def generalized_jsd(log_q: Tensor, log_p: Tensor, *, beta: float) -> Tensor:
    """Generalized JSD ``D_JSD(beta)`` of GKD (Agarwal et al. 2024, ICLR, "On-Policy Distillation
    of Language Models: Learning from Self-Generated Mistakes", its divergence definitions).

    ``m = beta * p + (1 - beta) * q``; ``JSD_beta = beta * KL(p || m) + (1 - beta) * KL(q || m)``.
    As TRL's ``GKDTrainer.generalized_jsd_loss``: ``beta == 0`` is *defined* as the forward
    ``KL(p || q)`` and ``beta == 1`` as the reverse ``KL(q || p)`` (the formula itself tends to
    0 at both ends; TRL special-cases the endpoints, and so do we).
    """
    if beta == 0.0:
        return kl(log_p, log_q)
    if beta == 1.0:
        return kl(log_q, log_p)
    log_m = log_mixture(beta, log_p, log_q)
    return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)


def total_variation(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``TVD(p, q) = 0.5 * sum_v |p_v - q_v|``.

    The total-variation f-divergence of Wen et al. 2023, ACL, "f-Divergence Minimization for
    Sequence-Level Knowledge Distillation" (Table 1, token-level form), one of the baselines
    DistiLLM (Ko et al. 2024) compares against.
    """
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


def skew_kl(log_q: Tensor, log_p: Tensor, *, alpha: float) -> Tensor:
    """alpha-skew KL of DistiLLM (Ko et al. 2024, ICML, "DistiLLM: Towards Streamlined
    Distillation for Large Language Models", the alpha-SKL definition):
    ``KL(p || alpha p + (1 - alpha) q)``.

    DistiLLM's code minimises the cross-entropy ``-sum p log m``; this is that minus the
    teacher's entropy, a constant, so the gradients are the same and identical inputs give 0.
    """
    return kl(log_p, log_mixture(alpha, log_p, log_q))


def skew_reverse_kl(log_q: Tensor, log_p: Tensor, *, alpha: float) -> Tensor:
    """alpha-skew reverse KL of DistiLLM (Ko et al. 2024, ICML, the alpha-SRKL definition).

    ``KL(q || alpha q + (1 - alpha) p)``.
    """
    return kl(log_q, log_mixture(alpha, log_q, log_p))


def adaptive_kl(log_q: Tensor, log_p: Tensor, *, mu: float) -> Tensor:
    """Adaptive KL (Wu et al. 2024, COLING 2025, "Rethinking Kullback-Leibler Divergence in
    Knowledge Distillation for Large Language Models", the AKL objective).

    Sort the vocabulary by teacher probability, descending. A token is in the *head* when the
    teacher's inclusive cumulative probability up to it is ``<= mu``; the top-1 token is always
    in the head (as in the authors' code), the rest is the *tail*. With
    ``g_head = sum_head |p - q|`` and ``g_tail = sum_tail |p - q|`` (no gradient through them)::

        AKL = g_head / (g_head + g_tail) * KL(p || q) + g_tail / (g_head + g_tail) * KL(q || p)

    When ``p == q`` both gaps are 0; the denominator is clamped at ``1e-12`` so the loss is 0.
    """
    with torch.no_grad():
        p, q = log_p.exp(), log_q.exp()
        sorted_p, order = p.sort(dim=-1, descending=True)
        gap = (sorted_p - q.gather(-1, order)).abs()
        head = sorted_p.cumsum(dim=-1) <= mu
        head[..., 0] = True
        gap_head = torch.where(head, gap, torch.zeros_like(gap)).sum(dim=-1)
        gap_tail = torch.where(head, torch.zeros_like(gap), gap).sum(dim=-1)
        denominator = (gap_head + gap_tail).clamp(min=AKL_EPS)
    return gap_head / denominator * kl(log_p, log_q) + gap_tail / denominator * kl(log_q, log_p)


def _target_split(log_p: Tensor, k: int) -> Tensor:
    """Bool ``(..., vocab)``: True on the teacher's top-``k`` tokens, ``k < vocab``."""
    top = log_p.topk(k, dim=-1).indices
    return torch.zeros_like(log_p, dtype=torch.bool).scatter_(-1, top, True)


def _masked_logsumexp(values: Tensor, keep: Tensor) -> Tensor:
    return torch.where(keep, values, torch.full_like(values, -math.inf)).logsumexp(dim=-1)


def atkd_uncertainty(log_p: Tensor, *, k: int) -> Tensor:
    """ATKD's uncertainty ``u = 1 - sum_{v in topk(p)} p_v`` per token.

    ``log_p (..., vocab) -> (...)``; 0 when ``k >= vocab``.
    """
    if k >= log_p.shape[-1]:
        return torch.zeros(log_p.shape[:-1], dtype=log_p.dtype, device=log_p.device)
    target = _target_split(log_p, k)
    return _masked_logsumexp(log_p, ~target).exp()


def atkd_parts(log_q: Tensor, log_p: Tensor, *, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(tkd, dkd, u)`` per token, each ``(...)``, with ``G`` = teacher's top-``k`` set.

    With ``P_G = sum_G p``, ``P_N = 1 - P_G = u`` and ``hat`` the renormalised restriction::

        TKD = KL([P_G, P_N] || [Q_G, Q_N]) + P_G * KL(hat p_G || hat q_G)
        DKD = KL(hat p_N || hat q_N)              (0 when the complement is empty)
        KL(p || q) = TKD + u * DKD                (exact; tested)
    """
    if k >= log_p.shape[-1]:
        # G is the whole vocabulary: TKD is the full KL, the complement is empty.
        zeros = torch.zeros(log_p.shape[:-1], dtype=log_p.dtype, device=log_p.device)
        return kl(log_p, log_q), zeros, zeros
    target = _target_split(log_p, k)
    minus_inf = torch.full_like(log_p, -math.inf)
    log_p_target = _masked_logsumexp(log_p, target)
    log_q_target = _masked_logsumexp(log_q, target)
    log_p_rest = _masked_logsumexp(log_p, ~target)
    log_q_rest = _masked_logsumexp(log_q, ~target)
    binary = kl(
        torch.stack([log_p_target, log_p_rest], dim=-1),
        torch.stack([log_q_target, log_q_rest], dim=-1),
    )
    # sum_G p_v (log hat p_v - log hat q_v) = P_G * KL(hat p_G || hat q_G)
    log_p_hat_g = torch.where(target, log_p - log_p_target.unsqueeze(-1), minus_inf)
    log_q_hat_g = torch.where(target, log_q - log_q_target.unsqueeze(-1), minus_inf)
    within_target = kl(log_p_hat_g, log_q_hat_g) * log_p_target.exp()
    # A teacher with no mass left outside G (logits of -inf there) has no diverse part.
    has_rest = torch.isfinite(log_p_rest)
    zero = torch.zeros_like(log_p_rest)
    safe_p_rest = torch.where(has_rest, log_p_rest, zero).unsqueeze(-1)
    safe_q_rest = torch.where(has_rest, log_q_rest, zero).unsqueeze(-1)
    rest = ~target & has_rest.unsqueeze(-1)
    log_p_hat_n = torch.where(rest, log_p - safe_p_rest, minus_inf)
    log_q_hat_n = torch.where(rest, log_q - safe_q_rest, minus_inf)
    dkd = kl(log_p_hat_n, log_q_hat_n)
    return binary + within_target, dkd, log_p_rest.exp().detach()


def select_hard_tokens(uncertainty: Tensor, mask: Tensor, *, ratio: float) -> Tensor:
    """ATKD's hard-to-learn tokens: the ``ceil(ratio * n)`` most uncertain unmasked ones.

    Args:
        uncertainty: ``(...)`` float, from :func:`atkd_uncertainty`.
        mask: ``(...)`` bool, same shape; ``n = mask.sum()``.

    Returns:
        ``(...)`` bool, True on the selected tokens. Ties go to the earlier token in row-major
        order (a stable sort), so the plain and the chunked paths pick the same tokens.
    """
    u = uncertainty.float()
    flat_u = torch.where(mask, u, torch.full_like(u, -1.0)).reshape(-1)
    n_hard = math.ceil(ratio * int(mask.sum()))
    order = torch.sort(flat_u, descending=True, stable=True).indices
    hard = torch.zeros_like(flat_u, dtype=torch.bool)
    hard[order[:n_hard]] = True
    return hard.reshape(mask.shape) & mask


def adaptive_teaching_kd(
    log_q: Tensor, log_p: Tensor, *, k: int, ratio: float, lam: float, hard: Tensor
) -> Tensor:
    """ATKD (Zhong et al. 2024, ACL, "Revisiting Knowledge Distillation for Autoregressive
    Language Models") with the target set taken as the teacher's top-``k`` tokens.

    The paper splits ``KL(p || q) = TKD + u * DKD`` (see :func:`atkd_parts`), drops the
    uncertainty coefficient ``u`` that suppresses the diverse-oriented part, and treats the
    ``ratio`` most uncertain tokens as hard-to-learn (both parts) and the rest as easy-to-learn
    (diverse-oriented part only), mixing the two groups as ``lam * L_easy + (1 - lam) * L_hard``.
    Per token (``hard`` from :func:`select_hard_tokens`)::

        hard: (1 - lam) / ratio       * (TKD + DKD)
        easy: lam / (1 - ratio)       * DKD           (0 when ratio == 1)

    so the mean over all ``n`` tokens equals ``lam * mean_easy + (1 - lam) * mean_hard`` when
    the groups hold ``(1 - ratio) n`` and ``ratio n`` tokens, while staying a per-token sum
    that gradient accumulation and chunking can add up.

    Departure from the paper: its target-oriented part is built on the one target token (the
    ground-truth next token, so ``u = 1 - p_target``); ``kd_loss`` sees no labels, so the
    target set here is the teacher's top-``k`` (``k = 1``: its argmax token) and TKD gains the
    within-set term that makes the split exact. The hard/easy selection ranks the tokens of one
    call (one micro-batch in the recipe).
    """
    tkd, dkd, _ = atkd_parts(log_q, log_p, k=k)
    hard_loss = (1.0 - lam) / ratio * (tkd + dkd)
    easy_loss = lam / (1.0 - ratio) * dkd if ratio < 1.0 else torch.zeros_like(dkd)
    return torch.where(hard, hard_loss, easy_loss)


def taid_divergence(log_q: Tensor, log_p: Tensor, *, t: float) -> Tensor:
    """TAID (Shing et al. 2025, ICLR, "TAID: Temporally Adaptive Interpolated Distillation",
    its interpolated target ``p_t`` and objective ``J_TAID``).

    ``r_t = softmax((1 - t) * stopgrad(z_s / T) + t * z_t / T)`` and the loss is
    ``KL(r_t || q)``. Log-softmax differs from the logits by a per-token constant, so the
    interpolation is taken on ``log_q`` and ``log_p``. ``t = 1`` is the forward KL; ``t = 0``
    gives 0 with zero gradient.
    """
    log_r = F.log_softmax((1.0 - t) * log_q.detach() + t * log_p, dim=-1)
    return kl(log_r, log_q)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    method: str,
    temperature: float,
    params: dict[str, float],
    hard: Tensor | None = None,
) -> Tensor:
    """``T^2 * D_method(p, q)`` per token: logits ``(..., vocab)`` -> ``(...)`` float32.

    ``params`` must be complete and validated (see ``losses.resolve_kd_params``); ``hard``
    (``(...)`` bool) is required for ``atkd``.
    """
    # At T = 1 the division would be a full (tokens, vocab) pass, and its backward another.
    scale = (lambda z: z) if temperature == 1.0 else (lambda z: z / temperature)
    log_q = F.log_softmax(scale(student_logits.float()), dim=-1)
    log_p = F.log_softmax(scale(teacher_logits.float()), dim=-1)
    if method == "fkl":
        value = forward_kl(log_q, log_p)
    elif method == "rkl":
        value = reverse_kl(log_q, log_p)
    elif method == "jsd":
        value = generalized_jsd(log_q, log_p, beta=params["beta"])
    elif method == "tvd":
        value = total_variation(log_q, log_p)
    elif method == "skl":
        value = skew_kl(log_q, log_p, alpha=params["alpha"])
    elif method == "srkl":
        value = skew_reverse_kl(log_q, log_p, alpha=params["alpha"])
    elif method == "akl":
        value = adaptive_kl(log_q, log_p, mu=params["mu"])
    elif method == "atkd":
        if hard is None:
            raise ValueError("atkd needs the hard-token selection")
        value = adaptive_teaching_kd(
            log_q,
            log_p,
            k=int(params["k"]),
            ratio=params["ratio"],
            lam=params["lam"],
            hard=hard,
        )
    elif method == "taid":
        value = taid_divergence(log_q, log_p, t=params["t"])
    else:
        raise ValueError(f"unknown KD method {method!r}")
    return value if temperature == 1.0 else value * temperature**2
