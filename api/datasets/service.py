from __future__ import annotations

import builtins
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from api.config import Settings
from api.datasets import repository
from api.datasets.storage import store_jsonl
from api.errors import NotFound
from api.storage import open_store
from models import Dataset, new_id


def create(
    *, session: Session, settings: Settings, project_id: str, name: str, source: BinaryIO
) -> Dataset:
    stored = store_jsonl(
        source, data_root=settings.resolved_data_root, max_bytes=settings.max_upload_bytes
    )
    # Validated and hashed on this host's disk, then streamed to the shared store (when one is
    # configured) before the row that names it exists: workers elsewhere fetch it from there.
    open_store(settings).upload_file(settings.resolved_data_root / stored.relative_path)
    row = Dataset(
        id=new_id("ds"),
        project_id=project_id,
        name=name,
        format=stored.format,
        rows=stored.rows,
        bytes=stored.bytes,
        sha256=stored.sha256,
        path=stored.relative_path,
    )
    return repository.add(session, row)


def get_or_raise(*, session: Session, project_id: str, dataset_id: str) -> Dataset:
    row = repository.get(session, project_id=project_id, dataset_id=dataset_id)
    if row is None:
        raise NotFound(f"Dataset {dataset_id} does not exist.")
    return row


def list(  # noqa: A001 - the house vocabulary
    *, session: Session, project_id: str, cursor: str | None, limit: int
) -> tuple[builtins.list[Dataset], str | None]:
    rows = repository.list_page(session, project_id=project_id, cursor=cursor, limit=limit)
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def file_path(settings: Settings, row: Dataset) -> Path:
    return settings.resolved_data_root / row.path
