"""Prompt distillation (Kujanpää et al. 2024, "Knowledge Injection via Prompt Distillation",
arXiv:2412.14964, Sec. 3): the teacher is the base model reading the document before the
question; the student is the same model with a LoRA adapter and *without* the document. The
student is trained so its next-token distributions on the answer tokens match the teacher's:

    L = mean over answer tokens t of  T^2 · D( softmax(z_teacher_t / T) , softmax(z_student_t / T) )

with ``D`` a divergence of :func:`ml.distillation.losses.kd_loss` (forward KL by default, the
paper's choice). Answers are either the pairs' own (``given``) or sampled from the teacher with
the document in context (``sampled``, the paper's setting, several per question).

The teacher is the frozen base: the adapter is disabled while it runs, under ``no_grad``, and its
answer logits are computed once before training (the base never changes, so they cannot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ml.distillation.losses import kd_loss
from ml.injection.answer_spans import AnswerRow, answer_logits, answer_row, right_pad
from ml.injection.qa import QAPair

_STOP_TEXT = (".", "\n")


@dataclass(frozen=True)
class DistillationExample:
    """One answer seen two ways: the student's closed-book row and the teacher's open-book row
    (same answer ids, see :mod:`ml.injection.answer_spans`)."""

    student: AnswerRow
    teacher: AnswerRow


def distillation_examples(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[QAPair],
    documents: Sequence[str],
    answers: Sequence[list[int]],
    owners: Sequence[int],
) -> list[DistillationExample]:
    """``answers[k]`` are answer ids for ``pairs[owners[k]]`` (each pair has a document)."""
    examples = []
    for ids, owner in zip(answers, owners, strict=True):
        pair = pairs[owner]
        assert pair.document is not None
        examples.append(
            DistillationExample(
                student=answer_row(tokenizer, pair.question, ids),
                teacher=answer_row(
                    tokenizer, pair.question, ids, document=documents[pair.document]
                ),
            )
        )
    return examples


def _cut_at_stop(tokenizer: PreTrainedTokenizerBase, ids: list[int], eos: int) -> list[int]:
    kept: list[int] = []
    for token in ids:
        if token == eos:
            break
        text = str(tokenizer.decode([token]))
        if any(stop in text for stop in _STOP_TEXT):
            break
        kept.append(token)
    return kept


@torch.no_grad()
def sample_teacher_answers(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[QAPair],
    documents: Sequence[str],
    *,
    samples_per_question: int,
    temperature: float,
    max_tokens: int,
    generator: torch.Generator,
) -> tuple[list[list[int]], list[int]]:
    """Sample answers from the base model (adapter disabled) reading each pair's document.

    Returns ``(answer ids, owner pair index)`` per sample; a sample ends before ``eos``, a
    ``.`` or a newline; an empty sample is dropped, and a pair left with none keeps its given
    answer (so every pair is trained on)."""
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    device = next(model.parameters()).device
    jobs = [i for i in range(len(pairs)) for _ in range(samples_per_question)]
    prefixes = []
    for i in jobs:
        pair = pairs[i]
        assert pair.document is not None
        row = answer_row(tokenizer, pair.question, [eos], document=documents[pair.document])
        prefixes.append(row.input_ids[: row.answer_start])
    new: list[list[int]] = [[] for _ in jobs]
    was_training = model.training
    model.eval()
    with model.disable_adapter():
        for _ in range(max_tokens):
            rows = [prefix + tokens for prefix, tokens in zip(prefixes, new, strict=True)]
            ids, mask = right_pad(rows, pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            step = logits[torch.arange(len(rows), device=device), last].float() / temperature
            drawn = torch.multinomial(step.softmax(-1).cpu(), 1, generator=generator)
            for k, token in enumerate(drawn.squeeze(1).tolist()):
                new[k].append(int(token))
    model.train(was_training)
    answers, owners = [], []
    for i, tokens in zip(jobs, new, strict=True):
        kept = _cut_at_stop(tokenizer, tokens, eos)
        if kept:
            answers.append(kept)
            owners.append(i)
    for i, pair in enumerate(pairs):
        if i not in owners:
            answers.append(list(tokenizer.encode(pair.answer, add_special_tokens=False)))
            owners.append(i)
    return answers, owners


@torch.no_grad()
def teacher_answer_logits(
    model: PeftModel, examples: Sequence[DistillationExample], pad_id: int, batch_size: int
) -> list[Tensor]:
    """Per example, the frozen base's ``(answer_length, vocab)`` float32 logits on its answer
    tokens with the document in context (adapter disabled, eval mode)."""
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    with model.disable_adapter():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            logits, _ = answer_logits(model, [e.teacher for e in chunk], pad_id)
            for k, example in enumerate(chunk):
                out.append(logits[k, : example.teacher.answer_length].float().cpu())
    model.train(was_training)
    return out


def distillation_loss(
    model: PeftModel,
    examples: Sequence[DistillationExample],
    teacher_logits: Sequence[Tensor],
    pad_id: int,
    *,
    loss: str,
    temperature: float,
) -> Tensor:
    """The KD term of one batch: the student's answer logits (closed book) against the stored
    teacher logits, masked to real answer tokens, mean over them."""
    student, mask = answer_logits(model, [e.student for e in examples], pad_id)
    target = torch.zeros_like(student, dtype=torch.float32)
    for k, logits in enumerate(teacher_logits):
        target[k, : logits.shape[0]] = logits.to(target.device)
    return kd_loss(student, target, method=loss, mask=mask, temperature=temperature)
