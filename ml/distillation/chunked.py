"""Distillation loss computed a chunk of tokens at a time from final hidden states.

The plain path holds the student's and the teacher's ``(batch, seq, vocab)`` logits, their
float32 log-probabilities and autograd's saved tensors all at once; at vocab 50k that is
gigabytes. Here only the hidden states ``(batch, seq, hidden)`` and the two lm-head weights are
kept. The response tokens (``mask``) are flattened to ``(tokens, hidden)`` and processed
``chunk_tokens`` at a time: each chunk computes its student and teacher logits, the per-token
divergence with the plain path's :func:`ml.distillation.divergences.token_divergence` (and the
student's cross-entropy), and sums them. Each chunk runs under
``torch.utils.checkpoint(use_reentrant=False)``, so its logits are freed after the forward and
recomputed in the backward: peak memory is one chunk's logits, not the whole batch's.

The chunk sums add up to the plain path's ``reduction="sum"``; ``"mean"`` divides that total
once by the number of unmasked tokens (STYLE.md, item 10).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from ml.distillation.divergences import atkd_uncertainty, select_hard_tokens, token_divergence
from ml.distillation.losses import IGNORE_INDEX, REDUCTIONS, resolve_kd_params

DEFAULT_CHUNK_TOKENS = 1024


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(hidden, weight, bias)


def _chunk_sums(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None,
    labels: Tensor | None,
    hard: Tensor | None,
    *,
    method: str,
    temperature: float,
    params: dict[str, float],
) -> Tensor:
    """``(2,)`` float32: ``[sum of T^2 D(p, q), sum of CE]`` over one chunk's tokens.

    ``*_hidden`` are ``(chunk, hidden)``, ``*_weight`` ``(vocab, hidden)``, ``labels`` and
    ``hard`` ``(chunk,)``. The CE entry is 0 when ``labels`` is None.
    """
    student_logits = _logits(student_hidden, student_weight, student_bias)
    with torch.no_grad():
        teacher_logits = _logits(teacher_hidden, teacher_weight, teacher_bias)
    kd = token_divergence(
        student_logits,
        teacher_logits,
        method=method,
        temperature=temperature,
        params=params,
        hard=hard,
    ).sum()
    if labels is None:
        ce = torch.zeros((), dtype=kd.dtype, device=kd.device)
    else:
        ce = F.cross_entropy(student_logits.float(), labels, reduction="sum")
    return torch.stack([kd, ce])


def chunked_kd_ce_sums(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    method: str,
    mask: Tensor,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    **params: float,
) -> tuple[Tensor, Tensor]:
    """Sums over the unmasked tokens of the KD loss and of the student's cross-entropy.

    Equal to ``kd_loss(s_logits, t_logits, method=..., mask=mask, reduction="sum")`` and
    ``ce_loss(s_logits, labels, reduction="sum")`` with ``s_logits = student_hidden @
    student_weight.T + student_bias`` (teacher likewise), without building those logits whole.

    Args:
        student_hidden: ``(batch, seq, hidden_s)`` final (post-norm) hidden states, with grad.
        student_weight: ``(vocab, hidden_s)`` student lm-head weight (its bias: ``student_bias``
            ``(vocab,)`` or None).
        teacher_hidden: ``(batch, seq, hidden_t)``; treated as constant (detached).
        teacher_weight: ``(vocab, hidden_t)`` teacher lm-head weight (bias ``teacher_bias``).
        method, temperature, **params: as for :func:`ml.distillation.losses.kd_loss`.
        mask: ``(batch, seq)`` bool, True on the tokens that count.
        labels: ``(batch, seq)`` int64 next-token ids for the CE sum, or None (CE sum = 0).
            Only positions where ``mask`` is True are read.
        chunk_tokens: tokens per chunk, >= 1.

    Returns:
        ``(kd_sum, ce_sum)``, scalar float32 tensors (0, with zero gradients, if no token is
        unmasked). For ``atkd`` the hard-token selection ranks all unmasked tokens of the call
        first (a no-grad pass over the teacher only), exactly as the plain path does.
    """
    return _chunked_sums(
        (student_hidden, student_weight, student_bias),
        (teacher_hidden, teacher_weight, teacher_bias),
        method=method,
        mask=mask,
        labels=labels,
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        params=params,
    )


def _chunked_sums(
    student: tuple[Tensor, Tensor, Tensor | None],
    teacher: tuple[Tensor, Tensor, Tensor | None],
    *,
    method: str,
    mask: Tensor,
    labels: Tensor | None,
    temperature: float,
    chunk_tokens: int,
    params: Mapping[str, float],
) -> tuple[Tensor, Tensor]:
    student_hidden, student_weight, student_bias = student
    teacher_hidden, teacher_weight, teacher_bias = teacher
    resolved = resolve_kd_params(method, params)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if mask.shape != student_hidden.shape[:-1] or mask.shape != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"mask {tuple(mask.shape)} must be the (batch, seq) of both hidden states "
            f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError("student and teacher lm heads differ in vocabulary size")
    flat_mask = mask.bool().reshape(-1)
    student_tokens = student_hidden.reshape(-1, student_hidden.shape[-1])[flat_mask]
    teacher_tokens = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])[flat_mask]
    token_labels = None if labels is None else labels.reshape(-1)[flat_mask]
    n_tokens = student_tokens.shape[0]
    if n_tokens == 0:
        # Keep the graph connected so backward() works and gives zero gradients.
        zero = (student_hidden.sum() + student_weight.sum()).float() * 0.0
        return zero, zero.clone()
    teacher_weight, teacher_bias = teacher_weight.detach(), _detach(teacher_bias)
    hard = None
    if method == "atkd":
        hard = _hard_tokens(
            teacher_tokens, teacher_weight, teacher_bias, temperature, resolved, chunk_tokens
        )
    run_chunk = partial(_chunk_sums, method=method, temperature=temperature, params=resolved)
    total = torch.zeros(2, dtype=torch.float32, device=student_hidden.device)
    for start in range(0, n_tokens, chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        sums = checkpoint(
            run_chunk,
            student_tokens[chunk],
            student_weight,
            student_bias,
            teacher_tokens[chunk],
            teacher_weight,
            teacher_bias,
            None if token_labels is None else token_labels[chunk],
            None if hard is None else hard[chunk],
            use_reentrant=False,
            preserve_rng_state=False,
        )
        total = total + sums
    return total[0], total[1]


def chunked_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    method: str,
    mask: Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    **params: float,
) -> Tensor:
    """:func:`ml.distillation.losses.kd_loss` from hidden states and lm heads, chunked.

    Shapes as in :func:`chunked_kd_ce_sums`. ``reduction="sum"`` returns the sum over unmasked
    tokens, ``"mean"`` that sum divided once by their count (0 when there are none).

    Returns:
        Scalar float32 tensor.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    kd_sum, _ = _chunked_sums(
        (student_hidden, student_weight, student_bias),
        (teacher_hidden, teacher_weight, teacher_bias),
        method=method,
        mask=mask,
        labels=None,
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        params=params,
    )
    if reduction == "sum":
        return kd_sum
    return kd_sum / mask.bool().sum().clamp(min=1)


def _detach(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()


def _hard_tokens(
    teacher_tokens: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None,
    temperature: float,
    params: dict[str, float],
    chunk_tokens: int,
) -> Tensor:
    """ATKD's hard-token flags ``(tokens,)`` ranked over all tokens, teacher chunk by chunk."""
    with torch.no_grad():
        parts = []
        for start in range(0, teacher_tokens.shape[0], chunk_tokens):
            chunk = teacher_tokens[start : start + chunk_tokens]
            logits = _logits(chunk, teacher_weight, teacher_bias)
            log_p = F.log_softmax(logits.float() / temperature, dim=-1)
            parts.append(atkd_uncertainty(log_p, k=int(params["k"])))
        uncertainty = torch.cat(parts)
    everything = torch.ones_like(uncertainty, dtype=torch.bool)
    return select_hard_tokens(uncertainty, everything, ratio=params["ratio"])


def lm_head_parts(model: PreTrainedModel) -> tuple[Tensor, Tensor | None]:
    """``(weight (vocab, hidden), bias (vocab,) or None)`` of a causal LM's output layer."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear lm head; chunked KD needs one")
    return head.weight, head.bias


def final_hidden_states(model: PreTrainedModel, **inputs: Tensor) -> Tensor:
    """``(batch, seq, hidden)`` the decoder's last (post-norm) hidden states, no logits.

    ``get_decoder()`` is the backbone of HF causal LMs (``LlamaModel``, ``GPT2Model``, ...) and
    reaches through a peft wrapper to the adapted backbone.
    """
    decoder = model.get_decoder()
    return decoder(**inputs).last_hidden_state


def check_logits_from_hidden(model: PreTrainedModel, *, name: str) -> None:
    """Raise ValueError unless ``model(x).logits == lm_head(final_hidden_states(x))``.

    Chunked KD rebuilds logits from the backbone and the lm head, which is wrong for models
    that scale or soft-cap their logits after the head; a 4-token probe catches them.
    """
    weight, bias = lm_head_parts(model)
    probe = torch.arange(4, device=weight.device).unsqueeze(0) % weight.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(input_ids=probe).logits.float()
            rebuilt = _logits(final_hidden_states(model, input_ids=probe), weight, bias).float()
    finally:
        model.train(was_training)
    if not torch.allclose(expected, rebuilt, rtol=1e-4, atol=1e-4):
        raise ValueError(
            f"the {name}'s logits are not lm_head(last hidden state) "
            f"({type(model).__name__}); set kd_chunk_tokens to 0 for this model"
        )


def shifted_model_kd_ce_sums(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    inputs: Mapping[str, Tensor],
    labels: Tensor,
    *,
    method: str,
    temperature: float,
    chunk_tokens: int,
    params: Mapping[str, float],
) -> tuple[Tensor, Tensor]:
    """``(kd_sum, ce_sum)`` of one batch, run through both models' backbones, chunked.

    Args:
        student, teacher: causal LMs sharing a vocabulary (the teacher runs under no_grad).
        inputs: ``input_ids`` and ``attention_mask``, ``(batch, seq)``.
        labels: ``(batch, seq - 1)`` already shifted: ``labels[:, i]`` is the token after
            position ``i``; -100 where no loss is taken.
        method, temperature, chunk_tokens, params: as for :func:`chunked_kd_ce_sums`.
    """
    hidden = final_hidden_states(student, **inputs)[:, :-1]
    with torch.no_grad():
        teacher_hidden = final_hidden_states(teacher, **inputs)[:, :-1]
    weight, bias = lm_head_parts(student)
    teacher_weight, teacher_bias = lm_head_parts(teacher)
    return _chunked_sums(
        (hidden, weight, bias),
        (teacher_hidden, teacher_weight, teacher_bias),
        method=method,
        mask=labels != IGNORE_INDEX,
        labels=labels,
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        params=params,
    )
