"""Request-scoped dependencies: the session (the one place a request commits) and the caller."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.config import Settings, get_settings
from api.enqueue import PendingEnqueues
from api.errors import Unauthorized
from models import ApiKey
from models.session import session_factory


def settings_dep() -> Settings:
    return get_settings()


def get_enqueues(request: Request) -> PendingEnqueues:
    pending = getattr(request.state, "enqueues", None)
    if pending is None:
        pending = request.state.enqueues = PendingEnqueues()
    return pending


def get_session(
    settings: Annotated[Settings, Depends(settings_dep)],
    enqueues: Annotated[PendingEnqueues, Depends(get_enqueues)],
) -> Iterator[Session]:
    """Commit when the route returns, roll back when it raises; enqueue only after commit."""
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        enqueues.drop()
        raise
    finally:
        session.close()
    enqueues.flush()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(settings_dep)]
EnqueuesDep = Annotated[PendingEnqueues, Depends(get_enqueues)]


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    project_id: str
    api_key_id: str


def get_caller(request: Request, session: SessionDep) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Send 'Authorization: Bearer <api key>'.")
    digest = hash_api_key(key.strip())
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        raise Unauthorized("The API key is not valid.")
    return Caller(project_id=row.project_id, api_key_id=row.id)


CallerDep = Annotated[Caller, Depends(get_caller)]
