from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    created_at: datetime
    max_running_jobs: int | None = Field(
        description="the project's own limit on jobs running at once; null: the server's "
        "default (DISTILL_PROJECT_MAX_RUNNING_JOBS)"
    )
    effective_max_running_jobs: int = Field(description="the limit the scheduler applies")
    running_jobs: int = Field(description="jobs holding a worker: running, cancelling, pausing")


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreate(BaseModel):
    name: str = Field(default="key", min_length=1, max_length=200)


class ApiKeyIssued(ApiKeyOut):
    key: str = Field(description="The key itself, shown once; only its hash is stored.")
