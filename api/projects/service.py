"""Projects and their API keys. A key is shown once; only its sha256 is stored."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.config import Settings
from api.deps import hash_api_key
from api.errors import NotFound, field_error
from api.projects import repository
from models import ApiKey, Project, new_id, utcnow


@dataclass(frozen=True)
class IssuedKey:
    row: ApiKey
    secret: str  # the only time the plain key exists outside the caller's hands


def create(
    *, session: Session, name: str, max_running_jobs: int | None = None
) -> tuple[Project, IssuedKey]:
    _check_limit(max_running_jobs)
    project = Project(id=new_id("prj"), name=name, max_running_jobs=max_running_jobs)
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


def _check_limit(max_running_jobs: int | None) -> None:
    if max_running_jobs is not None and max_running_jobs < 1:
        raise field_error(["max_running_jobs"], "must be 1 or more, or null for the default")


def set_limit(*, session: Session, project_id: str, max_running_jobs: int | None) -> Project:
    """The project's own limit on jobs running at once (None: the server's default). Lowering
    it stops no running job; it only holds new claims back until the project is under it."""
    _check_limit(max_running_jobs)
    project = get_or_raise(session=session, project_id=project_id)
    project.max_running_jobs = max_running_jobs
    session.flush()
    return project


def scheduling(*, session: Session, settings: Settings, project: Project) -> dict[str, int]:
    """What the scheduler applies to ``project`` (GET /v1/projects/me)."""
    own = project.max_running_jobs
    limit = own if own is not None else settings.project_max_running_jobs
    return {
        "effective_max_running_jobs": limit,
        "running_jobs": repository.count_running(session, project.id),
    }
