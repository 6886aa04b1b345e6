"""A tiny random LLaMA and a tokenizer trained on a few facts-world documents (seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ml.data.tokenizer import train_bpe_tokenizer
from ml.injection.facts_base import injection_split, person_document


@pytest.fixture(scope="session")
def injection_documents() -> list[str]:
    split = injection_split(0, num_people=60, injected=6)
    return [person_document(split.world, person) for person in split.injected]


@pytest.fixture(scope="session")
def injection_tokenizer(injection_documents: list[str]) -> Any:
    split = injection_split(0, num_people=60, injected=6)
    corpus = [person_document(split.world, p) for p in split.world.people]
    return train_bpe_tokenizer(corpus + injection_documents, vocab_size=400)


@pytest.fixture()
def tiny_lm(injection_tokenizer: Any) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(injection_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=96,
        tie_word_embeddings=False,
        pad_token_id=injection_tokenizer.pad_token_id,
        bos_token_id=injection_tokenizer.bos_token_id,
        eos_token_id=injection_tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper next-token distributions than a random init's near-uniform
        model.lm_head.weight.mul_(30)
    return model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two threads on two oversubscribed shared cores ran these steps ~8x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
