"""Operator commands: create a project and its first key straight in the database."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from api.config import Settings, get_settings
from api.deps import hash_api_key
from api.projects import service
from models import ApiKey
from models.session import session_scope


def _key_exists(settings: Settings, key: str) -> bool:
    with session_scope(settings.resolved_database_url) as session:
        digest = hash_api_key(key)
        return session.scalar(select(ApiKey.id).where(ApiKey.key_hash == digest)) is not None


def create_project_cli(
    name: str, settings: Settings | None = None, *, max_running_jobs: int | None = None
) -> dict[str, Any]:
    """``max_running_jobs``: the project's limit on jobs running at once (None: the server's
    DISTILL_PROJECT_MAX_RUNNING_JOBS)."""
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        project, issued = service.create(
            session=session, name=name, max_running_jobs=max_running_jobs
        )
        return {"project_id": project.id, "api_key": issued.secret,
                "max_running_jobs": project.max_running_jobs}  # fmt: skip


def set_project_limit_cli(
    project_id: str, max_running_jobs: int | None, settings: Settings | None = None
) -> dict[str, Any]:
    """Change a project's running-job limit (None: back to the server's default)."""
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        project = service.set_limit(
            session=session, project_id=project_id, max_running_jobs=max_running_jobs
        )
        return {"project_id": project.id, "max_running_jobs": project.max_running_jobs}


def ensure_local_credentials(settings: Settings, url: str) -> dict[str, Any]:
    """Embedded default: create a local project once and write its key where the CLI looks."""
    path = settings.home / "credentials.json"
    creds: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if creds.get("api_key") and _key_exists(settings, creds["api_key"]):
        creds["url"] = url
    else:
        made = create_project_cli("local", settings)
        creds = {"url": url, "api_key": made["api_key"], "project_id": made["project_id"]}
    path.write_text(json.dumps(creds, indent=2))
    path.chmod(0o600)
    return creds
