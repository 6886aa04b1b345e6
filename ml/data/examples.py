"""Tokenise (prompt, response) pairs for causal-LM training and batch them."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def _special_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    value = getattr(tokenizer, f"{name}_token_id", None)
    if not isinstance(value, int):
        raise ValueError(f"the tokenizer has no {name} token")
    return value


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int
) -> dict[str, list[int]]:
    """Encode one pair as ``[bos] + prompt + response + [eos]`` with labels on the response.

    Returns ``input_ids`` and ``labels``, both of length ``L <= max_length``; ``labels`` is
    ``IGNORE_INDEX`` (-100) on ``bos`` and the prompt, and the token id on the response and
    ``eos``. Labels are *not* shifted: the training loop shifts once (``logits[:, :-1]`` against
    ``labels[:, 1:]``).

    Truncation when too long: the prompt loses tokens from the left first (the end of the
    prompt, next to the response, matters most). If the response alone does not fit, the prompt
    keeps at most ``(max_length - 1) // 2`` tokens and the response is cut on the right and loses
    its ``eos`` (a cut response must not teach the model to stop there).
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    bos, eos = _special_id(tokenizer, "bos"), _special_id(tokenizer, "eos")
    prompt_ids: list[int] = tokenizer.encode(prompt, add_special_tokens=False)
    response_ids: list[int] = tokenizer.encode(response, add_special_tokens=False)
    if 2 + len(prompt_ids) + len(response_ids) > max_length:
        keep = max(max_length - 2 - len(response_ids), min(len(prompt_ids), (max_length - 1) // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []
    room = max_length - 1 - len(prompt_ids)
    tail = response_ids + [eos] if len(response_ids) + 1 <= room else response_ids[:room]
    input_ids = [bos] + prompt_ids + tail
    labels = [IGNORE_INDEX] * (1 + len(prompt_ids)) + tail
    return {"input_ids": input_ids, "labels": labels}


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad encoded examples into tensors.

    Returns ``input_ids (B, T)`` long padded with ``pad_id``, ``attention_mask (B, T)`` long
    (1 on real tokens), and ``labels (B, T)`` long padded with -100, where ``T`` is the longest
    example in the batch.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    width = max(len(example["input_ids"]) for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(batch):
        length = len(example["input_ids"])
        input_ids[row, :length] = torch.tensor(example["input_ids"], dtype=torch.long)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
