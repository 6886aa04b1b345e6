"""The answer tokens line up between the teacher's longer context and the student's prompt, and
the prompt-distillation KD term equals an independent per-token computation."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.distributions import Categorical, kl_divergence

from ml.distillation.lora import LoraSettings, apply_lora
from ml.injection.answer_spans import CONTEXT_SEPARATOR, answer_logits, text_answer_row
from ml.injection.prompt_distillation import (
    distillation_examples,
    distillation_loss,
    teacher_answer_logits,
)
from ml.injection.qa import generate_qa_pairs


def test_teacher_row_is_the_student_row_shifted_by_the_context(
    injection_tokenizer: Any, injection_documents: list[str]
) -> None:
    document = injection_documents[0]
    question, answer = "The employer of Ana Rel is", " Zed Corp"
    student = text_answer_row(injection_tokenizer, question, answer)
    teacher = text_answer_row(injection_tokenizer, question, answer, document=document)
    context = injection_tokenizer.encode(document + CONTEXT_SEPARATOR, add_special_tokens=False)
    assert teacher.answer_ids == student.answer_ids
    assert teacher.answer_ids == injection_tokenizer.encode(answer, add_special_tokens=False)
    assert teacher.answer_start == student.answer_start + len(context)
    assert teacher.input_ids[1 + len(context) :] == student.input_ids[1:]
    decoded = injection_tokenizer.decode(teacher.answer_ids)
    assert decoded == answer


def test_gathered_logits_are_those_of_each_row_alone(
    tiny_lm: Any, injection_tokenizer: Any, injection_documents: list[str]
) -> None:
    rows = [
        text_answer_row(injection_tokenizer, "Ana was born in", " Lumo"),
        text_answer_row(
            injection_tokenizer, "Ana was born in", " Zed Corp", document=injection_documents[1]
        ),
    ]
    with torch.no_grad():
        gathered, mask = answer_logits(tiny_lm, rows, int(injection_tokenizer.pad_token_id))
        for b, row in enumerate(rows):
            alone = tiny_lm(input_ids=torch.tensor([row.input_ids])).logits[0]
            for j in range(row.answer_length):
                # the logits at position answer_start - 1 + j predict answer token j
                expected = alone[row.answer_start - 1 + j]
                torch.testing.assert_close(gathered[b, j], expected, atol=1e-5, rtol=1e-5)
            assert mask[b].sum() == row.answer_length


def test_kd_term_equals_a_per_token_kl_over_answer_positions(
    tiny_lm: Any, injection_tokenizer: Any, injection_documents: list[str]
) -> None:
    base = copy.deepcopy(tiny_lm)
    model = apply_lora(tiny_lm, LoraSettings(r=4, alpha=8.0, target_modules=("q_proj", "v_proj")))
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, so student and teacher differ
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    pairs = generate_qa_pairs(injection_documents[:3])
    answers = [injection_tokenizer.encode(p.answer, add_special_tokens=False) for p in pairs]
    examples = distillation_examples(
        injection_tokenizer, pairs, injection_documents, answers, list(range(len(pairs)))
    )
    pad = int(injection_tokenizer.pad_token_id)
    targets = teacher_answer_logits(model, examples, pad, batch_size=2)
    temperature = 1.5
    with torch.no_grad():
        loss = distillation_loss(model, examples, targets, pad, loss="fkl", temperature=temperature)
        per_token = []
        for example in examples:
            t_row, s_row = example.teacher, example.student
            teacher = base(input_ids=torch.tensor([t_row.input_ids])).logits[0]
            student = model(input_ids=torch.tensor([s_row.input_ids])).logits[0]
            for j in range(s_row.answer_length):
                p = Categorical(logits=teacher[t_row.answer_start - 1 + j] / temperature)
                q = Categorical(logits=student[s_row.answer_start - 1 + j] / temperature)
                per_token.append(temperature**2 * kl_divergence(p, q))
    expected = torch.stack(per_token).mean()
    assert float(expected) > 1e-3  # not trivially zero
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
