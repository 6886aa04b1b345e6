"""Shared fixtures for ml/ tests: one tiny teacher per session, small records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from ml.data.formatting import to_prompt_response
from ml.data.instructions import generate_instruction_records, split_records
from ml.distillation.recipe import RecipeConfig


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    # The suite shares two cores with other work; more threads only add contention.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_teacher: Path) -> Path:
    """The session's trained 2-layer, hidden-64 teacher (tests/conftest.py builds it once)."""
    return tiny_teacher


@pytest.fixture(scope="session")
def instruction_pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, eval) prompt/response pairs from the synthetic set, rendered with the template."""
    train, held_out = split_records(generate_instruction_records(240, seed=7), 0.2, seed=0)
    return [to_prompt_response(r) for r in train], [to_prompt_response(r) for r in held_out]


Pairs = tuple[list[tuple[str, str]], list[tuple[str, str]]]


@pytest.fixture()
def make_config(tiny_teacher_dir: Path, instruction_pairs: Pairs) -> Callable[..., RecipeConfig]:
    train, held_out = instruction_pairs

    def make(**overrides: Any) -> RecipeConfig:
        base = RecipeConfig(
            teacher_path=tiny_teacher_dir,
            student_path=None,
            student_init={"from_teacher_layers": 2},
            train_records=train[:96],
            eval_records=held_out,
            batch_size=8,
            lr=2e-3,
            warmup_steps=1,
            max_length=64,
            eval_max_examples=8,
            max_new_tokens=4,
        )
        return replace(base, **overrides)

    return make
