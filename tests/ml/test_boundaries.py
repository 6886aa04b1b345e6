"""ml/ stays a pure torch/transformers package and never deserialises pickles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ml.distillation.schedule import lr_multiplier

ML_ROOT = Path(__file__).resolve().parents[2] / "ml"
FORBIDDEN_IMPORTS = {"sqlalchemy", "celery", "fastapi", "api", "workers", "models", "pickle"}


def _sources() -> list[Path]:
    return sorted(ML_ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ML_ROOT)))
def test_no_service_imports_and_no_pickle(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots = {node.module.split(".")[0]}
        else:
            continue
        assert not roots & FORBIDDEN_IMPORTS, f"{path.name} imports {roots & FORBIDDEN_IMPORTS}"
    for call in ("torch.save(", "torch.load(", "trust_remote_code=True"):
        assert call not in text, f"{path.name} uses {call}"


def test_package_init_files_are_empty() -> None:
    for init in ML_ROOT.rglob("__init__.py"):
        assert init.read_text(encoding="utf-8").strip() == "", init


def test_schedules_warm_up_then_decay() -> None:
    def lrs(schedule: str) -> list[float]:
        return [
            lr_multiplier(i, warmup_steps=2, total_steps=6, schedule=schedule) for i in range(6)
        ]

    assert lrs("constant") == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert lrs("linear") == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    cosine = lrs("cosine")
    assert cosine[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert cosine[3] == pytest.approx(0.5 * (1 + 2**-0.5))
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:], strict=False)) and cosine[-1] > 0
    with pytest.raises(ValueError):
        lr_multiplier(0, warmup_steps=0, total_steps=1, schedule="step")
