"""Shared fixtures for ml/ tests: one tiny teacher per session, small records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml.data.demo_teacher import build_tiny_teacher
from ml.data.formatting import to_prompt_response
from ml.data.instructions import generate_instruction_records, split_records


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    # The suite shares two cores with other work; more threads only add contention.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 2-layer, hidden-64 teacher (about two seconds to build)."""
    return build_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher") / "model", seed=0)


@pytest.fixture(scope="session")
def instruction_pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, eval) prompt/response pairs from the synthetic set, rendered with the template."""
    train, held_out = split_records(generate_instruction_records(240, seed=7), 0.2, seed=0)
    return [to_prompt_response(r) for r in train], [to_prompt_response(r) for r in held_out]
