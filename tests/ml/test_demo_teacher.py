from __future__ import annotations

from pathlib import Path

import pytest

from ml.data.demo_teacher import MAX_LENGTH, build_demo_teacher
from ml.data.formatting import to_prompt_response
from ml.data.instructions import generate_instruction_records, split_records
from ml.evaluation.generation import evaluate_model
from ml.loading import inspect_model_dir, load_causal_lm, load_tokenizer


def test_tiny_teacher_is_a_saved_llama(tiny_teacher_dir: Path) -> None:
    info = inspect_model_dir(tiny_teacher_dir)
    assert (info.architecture, info.num_layers, info.vocab_size) == ("LlamaForCausalLM", 2, 512)
    assert info.tokenizer_sha256 is not None


@pytest.mark.slow
def test_demo_teacher_learns_the_held_out_set(tmp_path: Path) -> None:
    # ~40 s on two idle cores (5 min when the cores are shared); the quoted figure comes from here.
    train, held_out = split_records(generate_instruction_records(4000, seed=0), 0.1, seed=1)
    logs: list[str] = []
    result = build_demo_teacher(
        tmp_path / "teacher", train_records=train, steps=600, log=logs.append
    )
    assert result["final_loss"] < 0.5 and len(logs) == 12
    model, tokenizer = load_causal_lm(tmp_path / "teacher"), load_tokenizer(tmp_path / "teacher")
    pairs = [to_prompt_response(r) for r in held_out[:300]]
    metrics = evaluate_model(
        model, tokenizer, pairs, max_length=MAX_LENGTH, max_new_tokens=12, batch_size=64
    )
    assert metrics["exact_match"] > 0.6
