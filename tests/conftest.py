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
