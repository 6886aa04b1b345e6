"""Every client test runs with its own DISTILL_HOME and no DISTILL_URL/DISTILL_API_KEY."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "distill-home"
    monkeypatch.setenv("DISTILL_HOME", str(home))
    monkeypatch.delenv("DISTILL_URL", raising=False)
    monkeypatch.delenv("DISTILL_API_KEY", raising=False)
    return home
