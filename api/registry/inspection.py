"""Checks a Hugging Face model directory without running any of its code."""

from __future__ import annotations

from pathlib import Path

from api.errors import field_error
from ml.loading import ModelInfo, UnsafeModelError, check_model_dir, inspect_model_dir


def inspect_or_reject(path: Path, *, loc: list[str | int]) -> ModelInfo:
    try:
        check_model_dir(path)
        return inspect_model_dir(path)
    except UnsafeModelError as exc:
        raise field_error(loc, str(exc)) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise field_error(loc, f"not a loadable Hugging Face model directory: {exc}") from exc
