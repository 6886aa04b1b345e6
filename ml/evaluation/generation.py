"""Greedy generation and the text metrics used for held-out evaluation."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ml.data.examples import collate, encode_example
from ml.distillation.losses import ce_loss


def _model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations of ``prompts``, one string each, stripped.

    Each prompt is encoded as ``[bos] + prompt`` (as in :func:`ml.data.examples.encode_example`)
    and left-padded within a batch so every row ends at the same position; generation stops at
    ``eos`` and only the new tokens are decoded.
    """
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if not isinstance(bos, int) or not isinstance(eos, int):
        raise ValueError("the tokenizer needs bos and eos tokens")
    pad_id = pad if isinstance(pad, int) else eos
    device = _model_device(model)
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad_id,
        bos_token_id=bos,
    )
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = [
                [bos] + tokenizer.encode(prompt, add_special_tokens=False)
                for prompt in prompts[start : start + batch_size]
            ]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for row, ids in enumerate(encoded):
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
            generated = model.generate(  # type: ignore[operator]
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
            )
            for row in generated[:, width:].tolist():
                if eos in row:
                    row = row[: row.index(eos)]
                outputs.append(str(tokenizer.decode(row, skip_special_tokens=True)).strip())
    finally:
        model.train(was_training)
    return outputs


def _normalise(text: str) -> list[str]:
    return text.split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the texts are equal after stripping and collapsing whitespace, else 0.0."""
    return float(_normalise(prediction) == _normalise(reference))


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b):
            current.append(
                previous[j] + 1 if token_a == token_b else max(previous[j + 1], current[j])
            )
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on whitespace tokens (Lin 2004, Sec. 3.1, with beta = 1).

    ``P = LCS / len(prediction)``, ``R = LCS / len(reference)``, ``F = 2PR / (P + R)``; 0.0
    when either side is empty or nothing matches (1.0 when both are empty).
    """
    pred, ref = _normalise(prediction), _normalise(reference)
    if not pred and not ref:
        return 1.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def response_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[tuple[str, str]],
    *,
    max_length: int,
    batch_size: int,
) -> float:
    """Mean cross-entropy per response token (incl. ``eos``) over all ``records``."""
    pad = tokenizer.pad_token_id
    pad_id = pad if isinstance(pad, int) else 0
    device = _model_device(model)
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        batch = collate(
            [
                encode_example(tokenizer, prompt, response, max_length)
                for prompt, response in records[start : start + batch_size]
            ],
            pad_id,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        total += float(ce_loss(logits[:, :-1], labels, reduction="sum"))
        count += int((labels != -100).sum())
    return total / max(count, 1)


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[tuple[str, str]],
    *,
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
) -> dict[str, float]:
    """Held-out metrics over ``(prompt text, response text)`` pairs.

    Returns ``{"loss": mean response-token CE, "exact_match": mean, "rouge_l": mean,
    "examples": n}`` (all zeros for an empty list). The model's train/eval mode is restored.
    """
    if not records:
        return {"loss": 0.0, "exact_match": 0.0, "rouge_l": 0.0, "examples": 0.0}
    was_training = model.training
    model.eval()
    try:
        loss = response_loss(
            model, tokenizer, records, max_length=max_length, batch_size=batch_size
        )
        predictions = greedy_generate(
            model,
            tokenizer,
            [prompt for prompt, _ in records],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    finally:
        model.train(was_training)
    references = [response for _, response in records]
    n = len(records)
    return {
        "loss": loss,
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "rouge_l": sum(map(rouge_l, predictions, references)) / n,
        "examples": float(n),
    }
