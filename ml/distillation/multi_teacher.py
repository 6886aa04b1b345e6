"""Several same-vocabulary teachers: a weighted mixture of their distributions, or one teacher
per example chosen by a field of the dataset line (a math teacher for math, a code teacher for
code). Both return logits that any KD loss of ``losses.py`` takes as the teacher's."""

from __future__ import annotations

import torch
from torch import Tensor


def mix_teacher_logits(
    teacher_logits: list[Tensor], weights: list[float], temperature: float
) -> Tensor:
    """Logits whose tempered softmax is the weighted mixture of the teachers' tempered softmaxes.

    The mixture of distributions (not of logits): ``p = Σ_i w_i softmax(z_i / T)``; returned as
    ``T · log p`` so that ``softmax(result / T) == p`` inside any loss.

    Args:
        teacher_logits: n tensors ``(batch, seq, vocab)``.
        weights: n non-negative weights; normalised to sum to 1.
        temperature: the loss's ``T > 0``.
    Returns:
        ``(batch, seq, vocab)`` float32.
    """
    if len(teacher_logits) != len(weights) or not weights:
        raise ValueError("give one weight per teacher")
    w = torch.tensor(weights, dtype=torch.float32, device=teacher_logits[0].device)
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError("teacher weights must be non-negative and not all zero")
    w = w / w.sum()
    log_probs = torch.stack(
        [torch.log_softmax(z.float() / temperature, dim=-1) for z in teacher_logits]
    )  # (n, batch, seq, vocab)
    log_w = torch.log(w).view(-1, 1, 1, 1)
    return temperature * torch.logsumexp(log_probs + log_w, dim=0)


def route_teacher_logits(teacher_logits: list[Tensor], route: Tensor) -> Tensor:
    """Per example, the logits of the teacher it is routed to.

    Args:
        teacher_logits: n tensors ``(batch, seq, vocab)``.
        route: ``(batch,)`` long, the teacher index of each example.
    Returns:
        ``(batch, seq, vocab)``.
    """
    if route.ndim != 1 or route.shape[0] != teacher_logits[0].shape[0]:
        raise ValueError("route must be (batch,)")
    if int(route.min()) < 0 or int(route.max()) >= len(teacher_logits):
        raise ValueError("route names a teacher that does not exist")
    stacked = torch.stack(teacher_logits)  # (n, batch, seq, vocab)
    return stacked[route, torch.arange(route.shape[0], device=route.device)]
