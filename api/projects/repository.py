"""Queries on projects and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import ApiKey, Project
from workers.scheduling import running_in_project


def get_project(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def add(session: Session, row: Project | ApiKey) -> None:
    session.add(row)
    session.flush()


def list_keys(session: Session, project_id: str) -> list[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.id)
    return list(session.scalars(stmt))


def get_key(session: Session, project_id: str, key_id: str) -> ApiKey | None:
    stmt = select(ApiKey).where(ApiKey.project_id == project_id, ApiKey.id == key_id)
    return session.scalar(stmt)


def count_running(session: Session, project_id: str) -> int:
    """Jobs of the project holding a worker: the count the scheduler compares with the limit."""
    return running_in_project(session, project_id)
