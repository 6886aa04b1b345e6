"""Token rows with a marked answer span, open book (document in context) and closed book.

The teacher of prompt distillation reads ``[bos] + document + "\\n" + question + answer``, the
student ``[bos] + question + answer``. The pieces are encoded *separately* and concatenated, so
the answer's token ids are identical in both rows and only shifted by the context's length: the
KD term compares the two models on the same answer tokens (:func:`answer_logits` gathers them).
The injection base model is trained on rows built by the same functions, so it reads contexts in
exactly the format distillation later gives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

CONTEXT_SEPARATOR = "\n"


@dataclass(frozen=True)
class AnswerRow:
    """``input_ids`` of one example and where its answer lies: tokens
    ``input_ids[answer_start : answer_start + answer_length]``."""

    input_ids: list[int]
    answer_start: int
    answer_length: int

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.answer_start : self.answer_start + self.answer_length]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _special(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    value = getattr(tokenizer, f"{name}_token_id", None)
    if not isinstance(value, int):
        raise ValueError(f"the tokenizer needs a {name} token")
    return value


def answer_row(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer_ids: Sequence[int],
    *,
    document: str | None = None,
    add_eos: bool = False,
) -> AnswerRow:
    """``[bos] (+ document + separator) + question + answer (+ eos)``; the answer span excludes
    ``eos``. ``answer_ids`` are given as ids so that sampled answers keep their tokens."""
    if not answer_ids:
        raise ValueError("the answer has no tokens")
    context = _encode(tokenizer, document + CONTEXT_SEPARATOR) if document is not None else []
    prefix = [_special(tokenizer, "bos")] + context + _encode(tokenizer, question)
    tail = [_special(tokenizer, "eos")] if add_eos else []
    return AnswerRow(prefix + list(answer_ids) + tail, len(prefix), len(answer_ids))


def text_answer_row(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str,
    *,
    document: str | None = None,
    add_eos: bool = False,
) -> AnswerRow:
    return answer_row(
        tokenizer, question, _encode(tokenizer, answer), document=document, add_eos=add_eos
    )


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(input_ids (B, T), attention_mask (B, T))`` long, right-padded to the longest row."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def answer_positions(rows: Sequence[AnswerRow]) -> tuple[Tensor, Tensor]:
    """``(index (B, A), mask (B, A))``: ``index[b, j]`` is the position whose logits predict
    answer token ``j`` of row ``b`` (``answer_start - 1 + j``); ``A`` is the longest answer and
    ``mask`` is False past a row's answer (its index then repeats the last real position)."""
    width = max(row.answer_length for row in rows)
    index = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, row in enumerate(rows):
        last = row.answer_start - 1 + row.answer_length - 1
        for j in range(width):
            index[b, j] = min(row.answer_start - 1 + j, last)
        mask[b, : row.answer_length] = True
    return index, mask


def answer_logits(
    model: torch.nn.Module, rows: Sequence[AnswerRow], pad_id: int
) -> tuple[Tensor, Tensor]:
    """One forward pass over right-padded ``rows``; returns ``(logits (B, A, V), mask (B, A))``
    where ``logits[b, j]`` is the distribution the model gives answer token ``j`` of row ``b``.
    A causal model's real tokens never attend to the padding after them, so right padding
    changes no logit that is gathered."""
    device = next(model.parameters()).device
    ids, attention = right_pad([row.input_ids for row in rows], pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
    index, mask = answer_positions(rows)
    index = index.to(device)
    gathered = torch.gather(logits, 1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return gathered, mask.to(device)
