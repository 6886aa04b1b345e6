"""Independent float64 references for the KD losses, written as explicit per-token loops.

Nothing here calls ml.distillation: each divergence is computed one token at a time with a
Python loop over the vocabulary, on 0-d float64 tensors (so autograd gives reference gradients),
mixtures in probability space (the implementation mixes in log space), sorting with Python's
``sorted``. Shapes: logits ``(batch, seq, vocab)``, mask ``(batch, seq)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Dist = list[Tensor]  # one 0-d float64 tensor per vocabulary entry


def softmax(logits: Tensor, temperature: float) -> Dist:
    scaled = [logits[v] / temperature for v in range(logits.shape[0])]
    top = max(float(x.detach()) for x in scaled)
    exps = [torch.exp(x - top) for x in scaled]
    total = sum(exps, torch.zeros((), dtype=torch.float64))
    return [e / total for e in exps]


def kl(a: Dist, b: Dist) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for a_v, b_v in zip(a, b, strict=True):
        if a_v.detach().item() > 0:
            total = total + a_v * (torch.log(a_v) - torch.log(b_v))
    return total


def mix(weight: float, a: Dist, b: Dist) -> Dist:
    return [weight * a_v + (1 - weight) * b_v for a_v, b_v in zip(a, b, strict=True)]


def detached(d: Dist) -> Dist:
    return [x.detach() for x in d]


def fkl(p: Dist, q: Dist, **_: float) -> Tensor:
    return kl(p, q)


def rkl(p: Dist, q: Dist, **_: float) -> Tensor:
    return kl(q, p)


def jsd(p: Dist, q: Dist, *, beta: float = 0.5, **_: float) -> Tensor:
    if beta == 0:
        return kl(p, q)
    if beta == 1:
        return kl(q, p)
    m = mix(beta, p, q)
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def tvd(p: Dist, q: Dist, **_: float) -> Tensor:
    gaps = (torch.abs(p_v - q_v) for p_v, q_v in zip(p, q, strict=True))
    return 0.5 * sum(gaps, torch.zeros((), dtype=torch.float64))


def skl(p: Dist, q: Dist, *, alpha: float = 0.1, **_: float) -> Tensor:
    return kl(p, mix(alpha, p, q))


def srkl(p: Dist, q: Dist, *, alpha: float = 0.1, **_: float) -> Tensor:
    return kl(q, mix(alpha, q, p))


def akl(p: Dist, q: Dist, *, mu: float = 0.5, **_: float) -> Tensor:
    order = sorted(range(len(p)), key=lambda v: -p[v].detach().item())
    head_gap = tail_gap = cumulative = 0.0
    for rank, v in enumerate(order):
        cumulative += p[v].detach().item()
        gap = abs(p[v].detach().item() - q[v].detach().item())
        if rank == 0 or cumulative <= mu:
            head_gap += gap
        else:
            tail_gap += gap
    total = max(head_gap + tail_gap, 1e-12)
    return head_gap / total * kl(p, q) + tail_gap / total * kl(q, p)


def atkd_parts(p: Dist, q: Dist, k: int) -> tuple[Tensor, Tensor, float]:
    """(TKD, DKD, u) with G = the teacher's top-k tokens (Python sort)."""
    top = set(sorted(range(len(p)), key=lambda v: -p[v].detach().item())[: min(k, len(p))])
    rest = [v for v in range(len(p)) if v not in top]
    p_g = sum((p[v] for v in top), torch.zeros((), dtype=torch.float64))
    q_g = sum((q[v] for v in top), torch.zeros((), dtype=torch.float64))
    tkd = kl([p_g, 1 - p_g], [q_g, 1 - q_g]) if rest else torch.zeros((), dtype=torch.float64)
    tkd = tkd + p_g * kl([p[v] / p_g for v in sorted(top)], [q[v] / q_g for v in sorted(top)])
    if not rest:
        return tkd, torch.zeros((), dtype=torch.float64), 0.0
    p_n, q_n = 1 - p_g, 1 - q_g
    dkd = kl([p[v] / p_n for v in rest], [q[v] / q_n for v in rest])
    return tkd, dkd, p_n.detach().item()


def taid(p: Dist, q: Dist, *, t: float, student_logits: Tensor, teacher_logits: Tensor,
         temperature: float, **_: float) -> Tensor:  # fmt: skip
    mixed = (1 - t) * student_logits.detach() + t * teacher_logits
    return kl(softmax(mixed, temperature), q)


def reference_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor,
    *,
    method: str,
    temperature: float = 1.0,
    reduction: str = "mean",
    **params: float,
) -> Tensor:
    """The KD loss by per-token loops; ``student`` may require grad (float64 advised)."""
    student, teacher = student.double(), teacher.double()
    tokens = [(b, s) for b in range(mask.shape[0]) for s in range(mask.shape[1]) if mask[b, s]]
    total = torch.zeros((), dtype=torch.float64) + 0.0 * student.sum()
    if method == "atkd":
        total = total + _atkd_total(student, teacher, tokens, temperature, **params)
    else:
        function: Callable[..., Tensor] = {
            "fkl": fkl,
            "rkl": rkl,
            "jsd": jsd,
            "tvd": tvd,
            "skl": skl,
            "srkl": srkl,
            "akl": akl,
            "taid": taid,
        }[method]
        for b, s in tokens:
            p = softmax(teacher[b, s], temperature)
            q = softmax(student[b, s], temperature)
            extra = {"student_logits": student[b, s], "teacher_logits": teacher[b, s]}
            value = function(p, q, temperature=temperature, **params, **extra)
            total = total + temperature**2 * value
    if reduction == "sum":
        return total
    return total / max(len(tokens), 1)


def _atkd_total(
    student: Tensor,
    teacher: Tensor,
    tokens: list[tuple[int, int]],
    temperature: float,
    k: float = 50,
    ratio: float = 0.5,
    lam: float = 0.2,
) -> Tensor:
    parts = []
    for b, s in tokens:
        p = softmax(teacher[b, s], temperature)
        q = softmax(student[b, s], temperature)
        parts.append(atkd_parts(p, q, int(k)))
    n_hard = math.ceil(ratio * len(tokens))
    by_uncertainty = sorted(range(len(tokens)), key=lambda i: -parts[i][2])
    hard = set(by_uncertainty[:n_hard])
    total = torch.zeros((), dtype=torch.float64)
    for i, (tkd, dkd, _) in enumerate(parts):
        if i in hard:
            total = total + (1 - lam) / ratio * (tkd + dkd)
        elif ratio < 1:
            total = total + lam / (1 - ratio) * dkd
    return temperature**2 * total


def random_kd_inputs(seed: int, shape: tuple[int, int, int] = (2, 5, 7)) -> tuple[Tensor, ...]:
    """Seeded ``(student_logits, teacher_logits, mask)``: logits ``(batch, seq, vocab)`` (the
    teacher's sharper), mask ``(batch, seq)`` with about 70 % of tokens on, never all off."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(shape, generator=generator)
    teacher = torch.randn(shape, generator=generator) * 2
    mask = torch.rand(shape[:2], generator=generator) > 0.3
    mask[0, 0] = True
    return student, teacher, mask
