from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from ml.data.examples import IGNORE_INDEX, collate, encode_example
from ml.data.tokenizer import tokenizer_sha256, train_bpe_tokenizer
from ml.loading import load_tokenizer

TEXTS = ["### Instruction:\nReverse the word cat.\n### Response:\ntac"] * 20 + [
    "Write dog in capital letters. DOG",
    "What is 3 plus 4? 7",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def test_special_tokens_are_set(tokenizer: PreTrainedTokenizerFast) -> None:
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) <= 300


@pytest.mark.parametrize("text", ["tac", "héllo wörld 🙂\n  spaced", "### Response:\n", ""])
def test_any_text_round_trips(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_saved_tokenizer_reloads_with_the_same_hash(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    tokenizer.save_pretrained(str(tmp_path))
    reloaded = load_tokenizer(tmp_path)
    assert tokenizer_sha256(reloaded) == tokenizer_sha256(tokenizer)
    assert reloaded.encode("tac", add_special_tokens=False) == tokenizer.encode(
        "tac", add_special_tokens=False
    )
    assert tokenizer_sha256(train_bpe_tokenizer(TEXTS, vocab_size=300)) == tokenizer_sha256(
        tokenizer
    )
    assert tokenizer_sha256(train_bpe_tokenizer(TEXTS, vocab_size=280)) != tokenizer_sha256(
        tokenizer
    )


def test_encode_example_labels_only_the_response(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt_ids = tokenizer.encode("Reverse cat.", add_special_tokens=False)
    response_ids = tokenizer.encode("tac", add_special_tokens=False)
    example = encode_example(tokenizer, "Reverse cat.", "tac", max_length=64)
    assert example["input_ids"] == [1, *prompt_ids, *response_ids, 2]
    assert example["labels"] == [IGNORE_INDEX] * (1 + len(prompt_ids)) + [*response_ids, 2]


def test_encode_example_truncates_the_prompt_from_the_left(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    prompt = "Write dog in capital letters. " * 5
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    response_ids = tokenizer.encode("DOG", add_special_tokens=False)
    max_length = len(response_ids) + 2 + 3
    example = encode_example(tokenizer, prompt, "DOG", max_length=max_length)
    assert len(example["input_ids"]) == max_length
    assert example["input_ids"] == [1, *prompt_ids[-3:], *response_ids, 2]


def test_encode_example_keeps_the_response_start_when_it_cannot_fit(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    response = "tac " * 30
    response_ids = tokenizer.encode(response, add_special_tokens=False)
    example = encode_example(tokenizer, "Reverse cat.", response, max_length=16)
    assert len(example["input_ids"]) == 16
    labelled = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert labelled == response_ids[: len(labelled)]  # a prefix, without eos
    assert tokenizer.eos_token_id not in example["input_ids"]


def test_collate_right_pads() -> None:
    batch = [
        {"input_ids": [1, 5, 6, 2], "labels": [-100, -100, 6, 2]},
        {"input_ids": [1, 7], "labels": [-100, 7]},
    ]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"].tolist() == [[-100, -100, 6, 2], [-100, 7, -100, -100]]
    assert all(t.dtype == torch.long for t in out.values())
