"""The model registry: local directories under the roots, uploaded archives, job outputs."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from api.config import Settings
from api.errors import NotFound
from api.registry import repository
from api.registry.archives import extract_upload
from api.registry.inspection import inspect_or_reject
from api.registry.paths import confine_model_dir
from api.storage import open_store
from models import Model, new_id


def register_local(
    *, session: Session, settings: Settings, project_id: str, name: str | None, path: str
) -> Model:
    resolved = confine_model_dir(path, settings.resolved_model_roots, loc=["body", "path"])
    info = inspect_or_reject(resolved, loc=["body", "path"])
    return _insert(session, project_id, name or resolved.name, "local", resolved, info, {})


def register_upload(
    *, session: Session, settings: Settings, project_id: str, name: str | None, source: BinaryIO
) -> Model:
    model_id = new_id("mdl")
    dest = settings.resolved_artifact_root / "models" / model_id
    model_dir = extract_upload(source, dest, max_bytes=settings.max_upload_bytes)
    try:
        info = inspect_or_reject(model_dir, loc=["file"])
        open_store(settings).upload_dir(dest)  # shared with workers on other hosts, if any
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return _insert(
        session, project_id, name or model_dir.name, "upload", model_dir, info, {}, model_id
    )


def register_job_output(
    *,
    session: Session,
    project_id: str,
    name: str,
    path: Path,
    job_id: str,
    lineage: dict[str, Any],
    model_id: str,
) -> Model:
    info = inspect_or_reject(path, loc=["output"])
    row = _insert(session, project_id, name, "job", path, info, lineage, model_id)
    row.source_job_id = job_id
    session.flush()
    return row


def _insert(
    session: Session,
    project_id: str,
    name: str,
    source: str,
    path: Path,
    info: Any,
    lineage: dict[str, Any],
    model_id: str | None = None,
) -> Model:
    row = Model(
        id=model_id or new_id("mdl"),
        project_id=project_id,
        name=name,
        source=source,
        path=str(path),
        architecture=info.architecture,
        model_type=info.model_type,
        num_parameters=info.num_parameters,
        vocab_size=info.vocab_size,
        num_layers=info.num_layers,
        tokenizer_sha256=info.tokenizer_sha256,
        weights_sha256=info.weights_sha256,
        lineage=lineage,
    )
    return repository.add(session, row)


def get_or_raise(*, session: Session, project_id: str, model_id: str) -> Model:
    row = repository.get(session, project_id=project_id, model_id=model_id)
    if row is None:
        raise NotFound(f"Model {model_id} does not exist.")
    return row


def list(  # noqa: A001 - the house vocabulary
    *, session: Session, project_id: str, cursor: str | None, limit: int
) -> tuple[builtins.list[Model], str | None]:
    rows = repository.list_page(session, project_id=project_id, cursor=cursor, limit=limit)
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)
