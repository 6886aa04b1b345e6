"""The entry point of an ``inject`` job: teach a model a batch of new documents.

Three methods with the same adapter, optimiser, schedule and number of steps:

* ``prompt_distillation`` — the student matches the document-reading teacher on the answers of
  question–answer pairs (:mod:`ml.injection.prompt_distillation`; Kujanpää et al. 2024).
* ``sft_docs`` — causal-LM fine-tuning on the documents (every token after ``bos``, and ``eos``).
* ``sft_qa`` — supervised fine-tuning on the same pairs, closed book: cross-entropy on the answer
  tokens given the question.

The pairs are the job's own or :func:`ml.injection.qa.generate_qa_pairs` of the documents.
``model`` is wrapped in place by a LoRA adapter (``peft``) and returned wrapped: save it with
:func:`ml.distillation.lora.save_lora_student`. ``on_metrics(step, {"loss", "lr"})`` is called
after every optimiser step; ``should_stop()`` before every step (a cancelled job stops there).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.distillation.lora import apply_lora
from ml.distillation.losses import ce_loss
from ml.distillation.schedule import build_scheduler
from ml.injection.answer_spans import AnswerRow, answer_logits, text_answer_row
from ml.injection.params import InjectionParams, resolve_lora, resolve_params
from ml.injection.prompt_distillation import (
    DistillationExample,
    distillation_examples,
    distillation_loss,
    sample_teacher_answers,
    teacher_answer_logits,
)
from ml.injection.qa import InjectionInputError, QAPair, assign_documents, generate_qa_pairs

MetricsSink = Callable[[int, dict[str, float]], None]


@dataclass
class InjectionOutcome:
    """The adapted model (a ``PeftModel``), one ``{"step", "loss", "lr"}`` per step taken, the
    pairs trained on (none for ``sft_docs``) and whether ``should_stop`` ended training early."""

    model: PeftModel
    history: list[dict[str, float]] = field(default_factory=list)
    qa_pairs: list[QAPair] = field(default_factory=list)
    stopped: bool = False


def _check_documents(documents: Sequence[str]) -> None:
    if not documents:
        raise InjectionInputError("documents", "at least one document is needed")
    for i, document in enumerate(documents):
        if not isinstance(document, str) or not document.strip():
            raise InjectionInputError(f"documents[{i}]", "must be a non-empty string")


def _check_lengths(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    method: str,
    documents: Sequence[str],
    pairs: Sequence[QAPair],
) -> None:
    """Every row the method will feed must fit the model's positions; the longest is a
    document (``sft_docs``) or a document followed by a question (the teacher's row)."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    if not isinstance(limit, int):
        return
    for i, pair in enumerate(pairs):
        document = documents[pair.document] if pair.document is not None else None
        context = document if method == "prompt_distillation" else None
        length = len(
            text_answer_row(tokenizer, pair.question, pair.answer, document=context).input_ids
        )
        if length > limit:
            field = f"documents[{pair.document}]" if context is not None else f"qa_pairs[{i}]"
            raise InjectionInputError(
                field, f"{length} tokens with its question; the model reads at most {limit}"
            )
    if method == "sft_docs":
        for i, row in enumerate(document_rows(tokenizer, documents)):
            if len(row.input_ids) > limit:
                raise InjectionInputError(
                    f"documents[{i}]",
                    f"{len(row.input_ids)} tokens; the model reads at most {limit}",
                )


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    if isinstance(pad, int):
        return pad
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise InjectionInputError("model", "the tokenizer needs a pad or eos token")
    return eos


def document_rows(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str]) -> list[AnswerRow]:
    """``[bos] + document + [eos]`` with every token after ``bos`` as the target span."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if not isinstance(bos, int) or not isinstance(eos, int):
        raise InjectionInputError("model", "the tokenizer needs bos and eos tokens")
    rows = []
    for document in documents:
        ids = list(tokenizer.encode(document, add_special_tokens=False)) + [eos]
        rows.append(AnswerRow([bos] + ids, 1, len(ids)))
    return rows


def _answer_ce(model: PeftModel, rows: Sequence[AnswerRow], pad_id: int) -> Tensor:
    logits, mask = answer_logits(model, rows, pad_id)
    width = logits.shape[1]
    labels = torch.full(mask.shape, -100, dtype=torch.long, device=logits.device)
    for b, row in enumerate(rows):
        labels[b, : row.answer_length] = torch.tensor(row.answer_ids[:width], device=logits.device)
    return ce_loss(logits, labels)


def _batches(count: int, batch_size: int, seed: int) -> Callable[[], list[int]]:
    """Endless shuffled passes over ``range(count)``, ``batch_size`` indices at a time."""
    rng = random.Random(seed)
    queue: list[int] = []

    def next_batch() -> list[int]:
        while len(queue) < min(batch_size, count):
            fresh = list(range(count))
            rng.shuffle(fresh)
            queue.extend(fresh)
        batch = queue[: min(batch_size, count)]
        del queue[: len(batch)]
        return batch

    return next_batch


def _prepare_distillation(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[QAPair],
    documents: Sequence[str],
    settings: InjectionParams,
) -> tuple[list[DistillationExample], list[Tensor]]:
    if settings.answers == "sampled":
        generator = torch.Generator().manual_seed(settings.seed)
        answers, owners = sample_teacher_answers(
            model,
            tokenizer,
            pairs,
            documents,
            samples_per_question=settings.samples_per_question,
            temperature=settings.sample_temperature,
            max_tokens=settings.max_answer_tokens,
            generator=generator,
        )
    else:
        answers = [list(tokenizer.encode(p.answer, add_special_tokens=False)) for p in pairs]
        owners = list(range(len(pairs)))
    examples = distillation_examples(tokenizer, pairs, documents, answers, owners)
    targets = teacher_answer_logits(model, examples, _pad_id(tokenizer), settings.batch_size)
    return examples, targets


def run_injection(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    method: str,
    documents: list[str],
    qa_pairs: list[QAPair] | None,
    params: Mapping[str, Any] | None,
    lora: Mapping[str, Any] | None,
    on_metrics: MetricsSink | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> InjectionOutcome:
    """Inject ``documents`` into ``model`` with ``method`` (see the module docstring).

    Raises:
        InjectionInputError: a bad method, parameter, LoRA setting, document or pair, naming
            the field; nothing has been trained when it is raised.
    """
    settings = resolve_params(method, params)
    _check_documents(documents)
    lora_settings = resolve_lora(model, lora)
    pairs: list[QAPair] = []
    if method != "sft_docs":
        given = qa_pairs if qa_pairs else generate_qa_pairs(documents)
        pairs = assign_documents(given, documents)
    for i, pair in enumerate(pairs):
        if not tokenizer.encode(pair.answer, add_special_tokens=False):
            raise InjectionInputError(f"qa_pairs[{i}].answer", "the answer has no tokens")
    _check_lengths(model, tokenizer, method, documents, pairs)
    pad_id = _pad_id(tokenizer)
    torch.manual_seed(settings.seed)
    student = apply_lora(model, lora_settings)
    student.train()
    examples: list[DistillationExample] = []
    targets: list[Tensor] = []
    rows: list[AnswerRow] = []
    if method == "prompt_distillation":
        examples, targets = _prepare_distillation(student, tokenizer, pairs, documents, settings)
    elif method == "sft_qa":
        rows = [text_answer_row(tokenizer, p.question, p.answer) for p in pairs]
    else:
        rows = document_rows(tokenizer, documents)
    count = len(examples) if method == "prompt_distillation" else len(rows)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    scheduler = build_scheduler(
        optimizer,
        warmup_steps=settings.warmup_steps,
        total_steps=settings.steps,
        schedule="cosine",
    )
    next_batch = _batches(count, settings.batch_size, settings.seed)
    outcome = InjectionOutcome(model=student, qa_pairs=pairs)
    for step in range(1, settings.steps + 1):
        if should_stop is not None and should_stop():
            outcome.stopped = True
            break
        batch = next_batch()
        if method == "prompt_distillation":
            loss = distillation_loss(
                student,
                [examples[i] for i in batch],
                [targets[i] for i in batch],
                pad_id,
                loss=settings.loss,
                temperature=settings.temperature,
            )
        else:
            loss = _answer_ce(student, [rows[i] for i in batch], pad_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        lr = float(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {"loss": float(loss.detach()), "lr": lr}
        outcome.history.append({"step": float(step), **metrics})
        if on_metrics is not None:
            on_metrics(step, metrics)
    student.eval()
    return outcome
