"""Tiny random LLaMA and GPT-2 models with a BPE tokenizer trained on the facts world."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ml.data.facts_world import build_world, edit_requests, training_sentences
from ml.data.tokenizer import train_bpe_tokenizer
from ml.editing.requests import EditRequest, parse_edit_requests


@pytest.fixture(scope="session")
def world_tokenizer() -> Any:
    return train_bpe_tokenizer(training_sentences(build_world(0)), vocab_size=400)


# Wider than the default 0.02 so that a random model's logits span a few nats and a target can
# actually be made the argmax by an edit.
INIT_RANGE = 0.3


def _ids(tokenizer: Any) -> dict[str, int]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def tiny_llama(tokenizer: Any, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=INIT_RANGE,
        **_ids(tokenizer),
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(tokenizer: Any, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=3,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=INIT_RANGE,
        **_ids(tokenizer),
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request: pytest.FixtureRequest, world_tokenizer: Any) -> Any:
    return tiny_llama(world_tokenizer) if request.param == "llama" else tiny_gpt2(world_tokenizer)


@pytest.fixture(scope="session")
def world_requests() -> list[EditRequest]:
    return parse_edit_requests(edit_requests(build_world(0), 6, seed=3))


@pytest.fixture(scope="session")
def world_corpus() -> list[str]:
    return training_sentences(build_world(0))[:60]
