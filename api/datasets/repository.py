from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Dataset


def add(session: Session, row: Dataset) -> Dataset:
    session.add(row)
    session.flush()
    return row


def get(session: Session, *, project_id: str, dataset_id: str) -> Dataset | None:
    stmt = select(Dataset).where(Dataset.project_id == project_id, Dataset.id == dataset_id)
    return session.scalar(stmt)


def list_page(
    session: Session, *, project_id: str, cursor: str | None, limit: int
) -> list[Dataset]:
    stmt = select(Dataset).where(Dataset.project_id == project_id)
    if cursor:
        stmt = stmt.where(Dataset.id < cursor)
    return list(session.scalars(stmt.order_by(Dataset.id.desc()).limit(limit + 1)))
