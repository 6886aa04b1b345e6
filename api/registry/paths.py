"""Confinement of model paths to the configured roots.

A registered path is refused when it names ``..``, when it resolves (symlinks followed) outside
every root, or when any file inside it is a symlink that leads outside its root.
"""

from __future__ import annotations

from pathlib import Path

from api.errors import field_error


def confine_model_dir(raw: str, roots: list[Path], *, loc: list[str | int]) -> Path:
    if not raw.strip():
        raise field_error(loc, "must not be empty")
    candidate = Path(raw).expanduser()
    if ".." in candidate.parts:
        raise field_error(loc, "must not contain '..'")
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    resolved = candidate.resolve()
    root = next((r for r in roots if resolved.is_relative_to(r)), None)
    if root is None:
        allowed = ", ".join(str(r) for r in roots)
        raise field_error(loc, f"must lie under a configured model root ({allowed})")
    if not resolved.is_dir():
        raise field_error(loc, "is not a directory")
    for inner in resolved.rglob("*"):
        if inner.is_symlink() and not inner.resolve().is_relative_to(root):
            raise field_error(loc, f"contains a symlink that leaves the model root: {inner.name}")
    return resolved
