"""Projects and their API keys. A key is shown once; only its sha256 is stored."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.deps import hash_api_key
from api.errors import NotFound
from api.projects import repository
from models import ApiKey, Project, new_id, utcnow


@dataclass(frozen=True)
class IssuedKey:
    row: ApiKey
    secret: str  # the only time the plain key exists outside the caller's hands


def create(*, session: Session, name: str) -> tuple[Project, IssuedKey]:
    project = Project(id=new_id("prj"), name=name)
    repository.add(session, project)
    return project, create_key(session=session, project_id=project.id, name="default")


def create_key(*, session: Session, project_id: str, name: str) -> IssuedKey:
    secret = "dsk_" + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        project_id=project_id,
        name=name,
        prefix=secret[:10],
        key_hash=hash_api_key(secret),
    )
    repository.add(session, row)
    return IssuedKey(row=row, secret=secret)


def get_or_raise(*, session: Session, project_id: str) -> Project:
    project = repository.get_project(session, project_id)
    if project is None:
        raise NotFound(f"Project {project_id} does not exist.")
    return project


def list_keys(*, session: Session, project_id: str) -> list[ApiKey]:
    return repository.list_keys(session, project_id)


def revoke_key(*, session: Session, project_id: str, key_id: str) -> ApiKey:
    row = repository.get_key(session, project_id, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} does not exist.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
