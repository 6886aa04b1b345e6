"""Shared fixtures. Everything the service writes goes under one temp folder, set before any
service module reads its settings."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_BASE = Path(tempfile.mkdtemp(prefix="distill-tests-"))
os.environ["DISTILL_HOME"] = str(_BASE / "home")
os.environ["DISTILL_MODEL_ROOTS"] = str(_BASE / "models")
# In-process API tests enqueue into a broker no worker reads; e2e tests start their own stacks.
os.environ["BROKER_URL"] = f"sqla+sqlite:///{_BASE / 'unread-broker.db'}"
os.environ.pop("DATABASE_URL", None)
(_BASE / "models").mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def test_base() -> Path:
    return _BASE


@pytest.fixture(scope="session")
def model_root() -> Path:
    return _BASE / "models"


@pytest.fixture(scope="session")
def tiny_teacher(model_root: Path) -> Path:
    """A real (tiny) LLaMA teacher trained here, under the configured model root."""
    from ml.data.demo_teacher import build_tiny_teacher

    return build_tiny_teacher(model_root / "tiny-teacher", seed=0)


@pytest.fixture(scope="session")
def instruction_records() -> list[dict]:
    from ml.data.instructions import generate_instruction_records

    return generate_instruction_records(400, seed=1)


@pytest.fixture
def jsonl_file(tmp_path: Path, instruction_records: list[dict]) -> Iterator[Path]:
    from ml.data.instructions import write_jsonl

    path = tmp_path / "train.jsonl"
    write_jsonl(instruction_records, path)
    yield path


@pytest.fixture(scope="session")
def tiny_other_vocab_student(model_root: Path) -> Path:
    """A small model with a tokenizer of its own (vocab 300, trained on half the text): the
    student of cross-vocabulary tests."""
    from ml.data.demo_teacher import build_demo_teacher
    from ml.data.instructions import generate_instruction_records

    out = model_root / "tiny-other-vocab"
    records = generate_instruction_records(300, seed=5)
    build_demo_teacher(out, train_records=records, steps=20, seed=5, vocab_size=300,
                       hidden_size=48, num_layers=1, log=lambda _: None)  # fmt: skip
    return out
