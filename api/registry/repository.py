from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Model


def add(session: Session, row: Model) -> Model:
    session.add(row)
    session.flush()
    return row


def get(session: Session, *, project_id: str, model_id: str) -> Model | None:
    stmt = select(Model).where(Model.project_id == project_id, Model.id == model_id)
    return session.scalar(stmt)


def list_page(session: Session, *, project_id: str, cursor: str | None, limit: int) -> list[Model]:
    stmt = select(Model).where(Model.project_id == project_id)
    if cursor:
        stmt = stmt.where(Model.id < cursor)
    return list(session.scalars(stmt.order_by(Model.id.desc()).limit(limit + 1)))
