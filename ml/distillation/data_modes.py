"""Where a distillation batch's responses come from: the ``seqkd``, ``onpolicy``, ``opd`` and
``skd`` data modes of the KD method contract (``offline`` is the dataset itself).

- ``seqkd`` -- Kim & Rush 2016, "Sequence-Level Knowledge Distillation" (Sec. 3.2): train on
  the teacher's generations instead of the references (:func:`seqkd_records`, done once).
- ``onpolicy`` -- Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning
  from Self-Generated Mistakes" (GKD, Algorithm 1): with probability ``lmbda`` an optimizer
  step trains on the student's own samples, scored by the teacher with any token-level KD loss
  (:func:`use_onpolicy`, :func:`onpolicy_batch`).
- ``opd`` -- on-policy distillation with a sampled-token reverse-KL reward (Thinking Machines,
  "On-Policy Distillation", 2025; Tinker): the student samples, and only the log-probabilities
  of the *sampled* tokens under teacher and student enter a REINFORCE loss (:func:`opd_loss`).
- ``skd`` -- Xu et al. 2024, "Speculative Knowledge Distillation: Bridging the Teacher-Student
  Gap Through Interleaved Sampling" (Sec. 3, Algorithm 1): the student proposes, the teacher
  keeps proposals inside its top-k and replaces the others (:func:`skd_batch`).

Batches are what :func:`ml.data.examples.collate` returns, so the training step is unchanged:
``input_ids``, ``attention_mask``, ``labels`` (all ``(batch, seq)`` long, right-padded), with
``labels`` = -100 on ``bos``, the prompt and padding, and the token id on every generated
token (``eos`` included when it was produced). The loss shifts once: ``logits[:, :-1]``
against ``labels[:, 1:]``. Sampling helpers live in :mod:`ml.distillation.sampling`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.data.examples import IGNORE_INDEX, collate
from ml.distillation.sampling import (
    GenerationSettings,
    IncrementalDecoder,
    choose_tokens,
    decode_responses,
    draw_uniforms,
    encode_prompt,
    fit_context,
    row_generators,
    sample_from_contexts,
    special_ids,
)

REDUCTIONS = ("mean", "sum")

__all__ = [
    "GenerationSettings",
    "onpolicy_batch",
    "opd_loss",
    "opd_reverse_kl",
    "prompt_ids_from_batch",
    "sampled_token_logprobs",
    "seqkd_records",
    "skd_batch",
    "step_generator",
    "use_onpolicy",
]


# ------------------------------------------------------------------------------ seeding
def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    """A CPU generator that is a pure function of ``(seed, step, stream)``.

    Gives each optimizer step (and each use, e.g. ``"onpolicy-coin"``, ``"onpolicy-sample"``)
    its own stream, so a resumed run needs only the step number to redraw exactly the same
    coins and samples -- no generator state has to be checkpointed.
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


# -------------------------------------------------------------------------------- seqkd
def seqkd_records(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[tuple[str, str]],
    settings: GenerationSettings,
    *,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[tuple[str, str]]:
    """Sequence-level KD data: ``records`` with each response replaced by the teacher's.

    Kim & Rush 2016, Sec. 3.2: the student is trained with plain CE on ``y_hat``, the teacher's
    beam-search output, approximating ``argmax_y p_T(y | x)``; here greedy decoding when
    ``settings.temperature == 0`` (beam size 1), else one sample from the filtered teacher
    distribution. Prompts are kept verbatim (``max_length`` only cuts what the teacher sees,
    see :func:`~ml.distillation.sampling.fit_context`); responses are decoded as
    :func:`~ml.distillation.sampling.decode_responses` does (up to ``eos``, stripped).

    Deterministic: the same ``(teacher, records, settings, seed)`` gives the same output for
    any ``batch_size``.

    Returns:
        ``[(prompt, teacher response text)]`` in the order of ``records``.
    """
    contexts = [encode_prompt(tokenizer, prompt) for prompt, _ in records]
    _, responses = sample_from_contexts(
        teacher,
        tokenizer,
        contexts,
        settings,
        generator=torch.Generator().manual_seed(seed),
        batch_size=batch_size,
        max_length=max_length,
    )
    texts = decode_responses(tokenizer, responses)
    return [(prompt, text) for (prompt, _), text in zip(records, texts, strict=True)]


# ----------------------------------------------------------------------------- onpolicy
def use_onpolicy(lmbda: float, generator: torch.Generator | None) -> bool:
    """GKD's coin (Agarwal et al. 2024, Algorithm 1): True with probability ``lmbda``.

    Draws exactly one float64 ``u ~ U[0, 1)`` from ``generator`` (``None``: torch's global CPU
    RNG), even for ``lmbda`` 0 or 1, and returns ``u < lmbda``: ``lmbda = 0`` is never
    on-policy (plain supervised KD), ``lmbda = 1`` always. Call once per optimizer step, e.g.
    with ``step_generator(seed, step, "onpolicy-coin")``.
    """
    if not 0.0 <= lmbda <= 1.0:
        raise ValueError(f"lmbda must lie in [0, 1], got {lmbda}")
    return bool(torch.rand((), generator=generator, dtype=torch.float64) < lmbda)


def prompt_ids_from_batch(batch: dict[str, Tensor]) -> list[list[int]]:
    """The ``[bos] + prompt`` ids of each row of a collated batch: tokens before the first label.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels``, ``(batch, seq)``, as
    :func:`ml.data.examples.collate` builds them (right-padded). A row with no labelled token
    yields all its real tokens.
    """
    prompts = []
    for ids, mask, labels in zip(
        batch["input_ids"].tolist(),
        batch["attention_mask"].tolist(),
        batch["labels"].tolist(),
        strict=True,
    ):
        length = sum(mask)
        labelled = [i for i, label in enumerate(labels[:length]) if label != IGNORE_INDEX]
        prompts.append(ids[: labelled[0] if labelled else length])
    return prompts


def _with_bos(contexts: Sequence[Sequence[int]], bos: int) -> list[list[int]]:
    if not contexts:
        raise ValueError("no prompts given")
    return [list(c) if c and c[0] == bos else [bos] + list(c) for c in contexts]


def _collate_generated(
    contexts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int
) -> dict[str, Tensor]:
    examples = [
        {"input_ids": context + response, "labels": [IGNORE_INDEX] * len(context) + response}
        for context, response in zip(contexts, responses, strict=True)
    ]
    return collate(examples, pad_id)


def onpolicy_batch(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_token_ids: list[list[int]],
    settings: GenerationSettings,
    *,
    generator: torch.Generator | None,
    max_length: int,
) -> dict[str, Tensor]:
    """A training batch of the student's own responses (GKD on-policy data; also ``opd``).

    Agarwal et al. 2024, Algorithm 1: ``y ~ p_S^theta(. | x)`` sampled without gradient, then
    any token-level divergence ``D(p_T || p_S^theta)(y | x)`` is minimised on it, e.g.
    ``kd_loss(student_logits[:, :-1], teacher_logits[:, :-1], mask=labels[:, 1:] != -100)``.

    Args:
        student: the model being trained; sampled in ``eval()`` under ``no_grad``, its mode
            restored afterwards.
        prompt_token_ids: one ``[bos] + prompt`` id list per example (``bos`` is prepended when
            missing), e.g. from :func:`prompt_ids_from_batch`.
        settings: sampling settings (GKD uses temperature 1; ``opd`` needs temperature 1,
            ``top_p`` 1 and ``top_k`` 0 to be exactly on-policy).
        generator: seeds the samples (see :func:`~ml.distillation.sampling.row_generators`).
        max_length: every row's ``context + response`` length is ``<= max_length`` (prompts are
            cut from the left, ``bos`` kept, as in :func:`~ml.distillation.sampling.fit_context`).

    Returns:
        ``{"input_ids", "attention_mask", "labels"}``, each ``(batch, seq)`` long with
        ``seq <= max_length``: labels are -100 on ``bos``, prompt and padding, and equal the
        sampled ids on the response (``eos`` labelled when generated).
    """
    bos, _, pad = special_ids(tokenizer)
    contexts, responses = sample_from_contexts(
        student,
        tokenizer,
        _with_bos(prompt_token_ids, bos),
        settings,
        generator=generator,
        batch_size=len(prompt_token_ids),
        max_length=max_length,
    )
    return _collate_generated(contexts, responses, pad)


# ---------------------------------------------------------------------------------- opd
def sampled_token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """``log softmax(logits)[tokens]``: each position's log-probability of the given token.

    Args:
        logits: ``(batch, seq, vocab)``, any float dtype (computed in float32), already shifted
            so position ``t`` predicts ``tokens[:, t]`` (``logits[:, :-1]`` with
            ``input_ids[:, 1:]``).
        tokens: ``(batch, seq)`` long; negative ids (e.g. -100) are read as 0 -- mask them.

    Returns:
        ``(batch, seq)`` float32, differentiable with respect to ``logits``.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    index = tokens.clamp(min=0).unsqueeze(-1)
    picked = logits.gather(-1, index).squeeze(-1).float()
    return picked - torch.logsumexp(logits.float(), dim=-1)


def _masked_reduce(per_token: Tensor, mask: Tensor, reduction: str) -> Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    return total if reduction == "sum" else total / mask.sum().clamp(min=1)


def _check_opd_shapes(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    if student.shape != teacher.shape or student.shape != mask.shape:
        raise ValueError(
            f"shapes differ: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}, "
            f"mask {tuple(mask.shape)}"
        )
    return mask.bool()


def opd_loss(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """On-policy distillation loss: REINFORCE with a per-token reverse-KL reward.

    Thinking Machines 2025, "On-Policy Distillation" (the Tinker recipe): for tokens
    ``y_i ~ q`` sampled by the student,
    ``A_i = -(log q(y_i | y_<i) - log p(y_i | y_<i))`` (discount 0: each token's own reward),
    and ``loss = -sum_i sg(A_i) * log q(y_i | y_<i)`` (importance weight 1, the samples being
    on-policy). Since ``E_{y~q}[grad log q(y)] = 0``,
    ``E_{y~q}[(log q(y) - log p(y)) grad log q(y)] = grad KL(q || p)`` at every prefix, so the
    gradient is an unbiased estimate of the per-position reverse-KL gradient -- as long as
    ``y`` was drawn from ``q`` itself (temperature 1, no top-k/top-p). The loss *value* is not
    the KL; log :func:`opd_reverse_kl` for that.

    Args:
        student_logprobs: ``(batch, seq)`` log q of the sampled tokens, with gradient
            (:func:`sampled_token_logprobs` of the shifted student logits).
        teacher_logprobs: ``(batch, seq)`` log p of the same tokens; never differentiated.
        mask: ``(batch, seq)``, True on sampled response tokens (``labels[:, 1:] != -100``).
        reduction: ``"mean"`` over unmasked tokens (0 if none, never NaN) or ``"sum"``.

    Returns:
        Scalar float32 tensor.
    """
    mask = _check_opd_shapes(student_logprobs, teacher_logprobs, mask)
    student = student_logprobs.float()
    advantage = -(student.detach() - teacher_logprobs.detach().float())
    return _masked_reduce(-advantage * student, mask, reduction)


def opd_reverse_kl(
    student_logprobs: Tensor, teacher_logprobs: Tensor, mask: Tensor, reduction: str = "mean"
) -> Tensor:
    """Monte Carlo reverse KL on the sampled tokens, for logging (no gradient).

    ``log q(y_i) - log p(y_i)`` per token, whose expectation over ``y_i ~ q`` is
    ``KL(q || p)`` at that prefix. Shapes, ``mask`` and ``reduction`` as in :func:`opd_loss`.
    """
    mask = _check_opd_shapes(student_logprobs, teacher_logprobs, mask)
    estimate = student_logprobs.detach().float() - teacher_logprobs.detach().float()
    return _masked_reduce(estimate, mask, reduction)


# ---------------------------------------------------------------------------------- skd
@torch.no_grad()
def skd_batch(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_token_ids: list[list[int]],
    settings: GenerationSettings,
    *,
    top_k: int = 25,
    generator: torch.Generator | None,
    max_length: int,
    teacher_settings: GenerationSettings | None = None,
) -> tuple[dict[str, Tensor], float]:
    """Speculative KD data: student proposals, kept if in the teacher's top-k, else replaced.

    Xu et al. 2024, Sec. 3 / Algorithm 1. At each response position ``i``, given the
    interleaved prefix ``y_<i``: the student proposes ``y'_i ~ q(. | y_<i)`` (``settings``);
    if the teacher ranks ``y'_i`` in its top ``top_k`` (its logit ``>=`` the k-th largest, so
    ties at the boundary count as inside) then ``y_i = y'_i``, else
    ``y_i ~ p(. | y_<i)`` drawn with ``teacher_settings`` (default ``settings``; temperature 0
    replaces with the teacher's argmax). A response stops after ``eos`` or its budget, as in
    :func:`onpolicy_batch`. ``top_k >= vocab`` keeps every proposal (pure on-policy);
    ``top_k = 1`` with a greedy teacher gives the teacher's greedy tokens.

    Both models run in ``eval()`` under ``no_grad`` (modes restored); each row draws two
    uniforms per step from its own generator, so results do not depend on batch composition.

    Returns:
        ``(batch, acceptance_rate)``: the batch as in :func:`onpolicy_batch`; the rate is
        accepted proposals / all proposals (every generated token is one proposal).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    bos, eos, pad = special_ids(tokenizer)
    fitted = [
        fit_context(c, settings.max_new_tokens, max_length)
        for c in _with_bos(prompt_token_ids, bos)
    ]
    contexts = [context for context, _ in fitted]
    budgets = [budget for _, budget in fitted]
    replace_with = teacher_settings if teacher_settings is not None else settings
    generators = row_generators(len(contexts), generator)
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        responses, accepted = _interleave(
            student, teacher, contexts, budgets, settings, replace_with, top_k, generators, eos, pad
        )
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    proposed = sum(len(response) for response in responses)
    return _collate_generated(contexts, responses, pad), accepted / max(proposed, 1)


def _interleave(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    contexts: list[list[int]],
    budgets: list[int],
    settings: GenerationSettings,
    teacher_settings: GenerationSettings,
    top_k: int,
    generators: list[torch.Generator],
    eos: int,
    pad: int,
) -> tuple[list[list[int]], int]:
    """The SKD decoding loop; returns the responses and the number of accepted proposals."""
    student_decoder = IncrementalDecoder(student, contexts, pad)
    teacher_decoder = IncrementalDecoder(teacher, contexts, pad)
    responses: list[list[int]] = [[] for _ in contexts]
    done = [budget <= 0 for budget in budgets]
    accepted = 0
    while not all(done):
        student_logits = student_decoder.logits()
        teacher_logits = teacher_decoder.logits().to(student_logits.device)
        if student_logits.shape != teacher_logits.shape:
            raise ValueError("student and teacher vocabularies differ; skd needs them equal")
        # Two draws per row and step, used or not, keep each row's stream fixed.
        proposal_u, replacement_u = draw_uniforms(generators), draw_uniforms(generators)
        proposals = choose_tokens(student_logits, settings, proposal_u)
        k = min(top_k, teacher_logits.shape[-1])
        kth = torch.topk(teacher_logits, k, dim=-1).values[:, -1]
        keep = teacher_logits.gather(-1, proposals.unsqueeze(-1)).squeeze(-1) >= kth
        replacements = choose_tokens(teacher_logits, teacher_settings, replacement_u)
        tokens = torch.where(keep, proposals, replacements).tolist()
        kept = keep.tolist()
        for row, token in enumerate(tokens):
            if done[row]:
                tokens[row] = pad
                continue
            accepted += int(kept[row])
            responses[row].append(token)
            done[row] = token == eos or len(responses[row]) >= budgets[row]
        step_tokens = torch.tensor(tokens, dtype=torch.long)
        student_decoder.append(step_tokens)
        teacher_decoder.append(step_tokens)
    return responses, accepted
