"""A job's inputs on this host: with shared storage (``DISTILL_STORAGE_URL``), the paths that a
job's ``resolved`` record names (written by the API host) become this host's cache paths, and
whatever is missing there is fetched from the store before the job reads it. With the local disk
as the store, ``resolved`` comes back unchanged.

Datasets are checked against the sha256 the database keeps, a ``from_checkpoint`` source
checkpoint against its directory sha256; model directories are fetched whole into a staging
directory and renamed into place, so a cache entry is never half there."""

from __future__ import annotations

import copy
from typing import Any

from api.config import Settings
from api.storage import ArtifactStore, open_store

# Keys of ``resolved`` entries that hold a recorded path (a dataset, model or checkpoint).
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
            sha256 = node.get("sha256") if key == "path" else None
            node[key] = str(store.fetch_recorded(value, sha256))
        else:
            _walk(store, value)
