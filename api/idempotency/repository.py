"""Queries on idempotency keys. Every query names the project."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import IdempotencyKey


def get(session: Session, *, project_id: str, key: str) -> IdempotencyKey | None:
    stmt = select(IdempotencyKey).where(
        IdempotencyKey.project_id == project_id, IdempotencyKey.key == key
    )
    return session.scalar(stmt)


def add(session: Session, row: IdempotencyKey) -> None:
    session.add(row)
    session.flush()


def delete(session: Session, row: IdempotencyKey) -> None:
    session.delete(row)
    session.flush()


def purge_expired(session: Session, *, now: datetime) -> int:
    """Housekeeping across projects (the worker loop calls it): expired keys are dead rows."""
    result = session.execute(sql_delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
