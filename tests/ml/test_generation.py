from __future__ import annotations

from pathlib import Path

import pytest

from ml.evaluation.generation import evaluate_model, exact_match, greedy_generate, rouge_l
from ml.loading import load_causal_lm, load_tokenizer


def test_rouge_l_hand_computed() -> None:
    # prediction "the cat sat on mat", reference "the cat is on the mat":
    # LCS = "the cat on mat" = 4; P = 4/5, R = 4/6; F = 2PR/(P+R) = (32/30)/(44/30) = 8/11
    assert rouge_l("the cat sat on mat", "the cat is on the mat") == pytest.approx(8 / 11)
    assert rouge_l("a b c", "a b c") == 1.0
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("", "a") == 0.0
    assert rouge_l("", "") == 1.0


def test_exact_match_normalises_whitespace() -> None:
    assert exact_match("  a  b\n", "a b") == 1.0
    assert exact_match("a b", "a  c") == 0.0


def test_greedy_generate_is_batch_invariant(tiny_teacher_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_teacher_dir), load_tokenizer(tiny_teacher_dir)
    prompts = [
        "### Instruction:\nWhat is the capital of Zorvia?\n### Response:\n",
        "### Instruction:\nReverse the word fish.\n### Response:\n",
        "### Instruction:\nAdd 3 and 4.\n### Response:\n",
    ]
    batched = greedy_generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [greedy_generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(text, str) and text == text.strip() for text in batched)
    assert all("<eos>" not in text and "<pad>" not in text for text in batched)


def test_evaluate_model_reports_all_metrics(
    tiny_teacher_dir: Path, instruction_pairs: tuple[list[tuple[str, str]], list[tuple[str, str]]]
) -> None:
    model, tokenizer = load_causal_lm(tiny_teacher_dir), load_tokenizer(tiny_teacher_dir)
    _, held_out = instruction_pairs
    result = evaluate_model(
        model, tokenizer, held_out[:12], max_length=64, max_new_tokens=6, batch_size=8
    )
    assert set(result) == {"loss", "exact_match", "rouge_l", "examples"}
    assert result["examples"] == 12
    assert 0.0 < result["loss"] < 10.0
    assert 0.0 <= result["exact_match"] <= result["rouge_l"] + 1e-9 <= 1.0 + 1e-9
