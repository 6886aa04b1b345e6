"""Scores of question–answer pairs, closed book or with a document in context, two ways:

* ``teacher_forced`` — the mean over pairs of the fraction of answer tokens that are the model's
  argmax given the question and the answer's previous tokens;
* ``exact_match`` — greedy decoding of as many tokens as the answer has, compared as text with
  the answer (stripped). Teacher forcing overstates what a user sees; both are reported.

Rows are built by :mod:`ml.injection.answer_spans`, the format the models were trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from ml.injection.answer_spans import AnswerRow, answer_logits, right_pad, text_answer_row

BATCH_SIZE = 64


def _pad(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    return pad if isinstance(pad, int) else int(tokenizer.eos_token_id)  # type: ignore[arg-type]


@torch.no_grad()
def _greedy_answers(
    model: torch.nn.Module, rows: Sequence[AnswerRow], pad_id: int
) -> list[list[int]]:
    device = next(model.parameters()).device
    prefixes = [row.input_ids[: row.answer_start] for row in rows]
    new: list[list[int]] = [[] for _ in rows]
    for _ in range(max(row.answer_length for row in rows)):
        active = [i for i, row in enumerate(rows) if len(new[i]) < row.answer_length]
        current = [prefixes[i] + new[i] for i in active]
        ids, mask = right_pad(current, pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = torch.tensor([len(r) - 1 for r in current], device=device)
        choice = logits[torch.arange(len(current), device=device), last].argmax(-1).tolist()
        for i, token in zip(active, choice, strict=True):
            new[i].append(int(token))
    return new


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    documents: Sequence[str] | None = None,
) -> dict[str, float]:
    """``{"teacher_forced", "exact_match", "n"}`` over ``(question, " answer")`` pairs; with
    ``documents`` (one per pair) each question is read after its document (open book)."""
    if not pairs:
        return {"teacher_forced": float("nan"), "exact_match": float("nan"), "n": 0.0}
    was_training = model.training
    model.eval()
    pad_id = _pad(tokenizer)
    forced: list[float] = []
    matched: list[float] = []
    try:
        for start in range(0, len(pairs), BATCH_SIZE):
            chunk = pairs[start : start + BATCH_SIZE]
            contexts = documents[start : start + BATCH_SIZE] if documents else [None] * len(chunk)
            rows = [
                text_answer_row(tokenizer, q, a, document=d)
                for (q, a), d in zip(chunk, contexts, strict=True)
            ]
            logits, _ = answer_logits(model, rows, pad_id)
            predicted = logits.argmax(-1).cpu()
            for k, row in enumerate(rows):
                hits = predicted[k, : row.answer_length].tolist()
                forced.append(
                    sum(int(x == y) for x, y in zip(hits, row.answer_ids, strict=True)) / len(hits)
                )
            for (_, answer), ids in zip(chunk, _greedy_answers(model, rows, pad_id), strict=True):
                text = str(tokenizer.decode(ids, skip_special_tokens=True)).strip()
                matched.append(float(text == answer.strip()))
    finally:
        model.train(was_training)
    return {
        "teacher_forced": sum(forced) / len(forced),
        "exact_match": sum(matched) / len(matched),
        "n": float(len(pairs)),
    }
