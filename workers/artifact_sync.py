"""A job's inputs on this host: with shared storage (``DISTILL_STORAGE_URL``), the paths that a
job's ``resolved`` record names (written by the API host) become this host's cache paths, and
whatever is missing there is fetched from the store before the job reads it. With the local disk
as the store, ``resolved`` comes back unchanged.

Datasets are checked against the sha256 the database keeps, a ``from_checkpoint`` source
checkpoint against its directory sha256; model directories are fetched whole into a staging
directory and renamed into place, so a cache entry is never half there."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from api.config import Settings
from api.storage import ArtifactStore, open_store

# Keys of ``resolved`` entries that hold a path to a model directory.
_MODEL_PATH_KEYS = ("path", "teacher_path", "tokenizer_path")


def fetch_job_inputs(settings: Settings, resolved: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``resolved`` whose paths are this host's, each one present locally."""
    store = open_store(settings)
    if not store.is_remote:
        return resolved
    out = copy.deepcopy(resolved)
    _walk(store, out)
    return out


def _walk(store: ArtifactStore, node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(store, item)
        return
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        if key in _MODEL_PATH_KEYS and isinstance(value, str):
            node[key] = str(_fetch(store, value, node.get("sha256") if key == "path" else None))
        else:
            _walk(store, value)


def _fetch(store: ArtifactStore, recorded: str, sha256: str | None) -> Path:
    local = store.localize(recorded)
    if local == Path(recorded) and local.exists():
        return local  # already here (this host wrote it), or a shared model root
    try:
        store.key_for(local)
    except ValueError:
        return local  # outside the store's layout (a model root): used as recorded
    if local.suffix == ".jsonl":
        return store.ensure_file(local, sha256)
    return store.ensure_dir(local, sha256)
