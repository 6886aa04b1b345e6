"""Service settings, read from the environment.

With no settings at all the service runs on the *embedded default*: SQLite and a kombu
SQLAlchemy broker under ``DISTILL_HOME`` (``./.distill``), so nothing needs a server.
``DATABASE_URL=postgresql+psycopg://…`` and ``BROKER_URL=redis://…`` switch to the real stack.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _home() -> Path:
    return Path(os.environ.get("DISTILL_HOME", ".distill")).resolve()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILL_", extra="ignore")

    home: Path = Field(default_factory=_home)
    # DATABASE_URL and BROKER_URL are read without the prefix: they are the usual names.
    database_url: str = Field(default="", validation_alias="DATABASE_URL")
    broker_url: str = Field(default="", validation_alias="BROKER_URL")
    data_root: Path | None = None
    artifact_root: Path | None = None
    # Directories under which local model paths may be registered (os.pathsep-separated).
    model_roots: str = ""
    max_upload_bytes: int = 512 * 1024 * 1024
    max_spec_bytes: int = 256 * 1024
    # POST /v1/models/{id}/generate runs in the API process: small models only.
    generate_max_parameters: int = 200_000_000
    allow_trust_remote_code: bool = False
    lease_seconds: float = 60.0
    # A worker write retries a broken database connection this long (a restart, a failover).
    db_retry_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    max_lease_expiries: int = 3
    sweep_interval_seconds: float = 15.0
    # A queued job whose message may have been lost is re-enqueued after this long.
    requeue_after_seconds: float = 120.0
    # Scheduling (workers/scheduling.py): jobs of one project running at once unless the
    # project sets its own max_running_jobs; and the processes (nproc) this worker offers.
    project_max_running_jobs: int = Field(default=2, ge=1)
    worker_max_nproc: int = Field(default=1, ge=1)
    # Redis visibility timeout: above the longest job, so Redis never redelivers a live one.
    visibility_timeout_seconds: int = 7 * 24 * 3600
    # Workers mirror each job's params, metrics and tags to this MLflow tracking URI when set
    # (workers/mlflow_logging.py; needs the `mlflow` extra).
    mlflow_tracking_uri: str = ""
    # Idempotency-Key: how long a key and its first response are kept.
    idempotency_ttl_hours: float = 24.0
    # Server-Sent Events (GET /v1/jobs/{id}/stream): database poll and keep-alive comment.
    sse_poll_seconds: float = 0.5
    sse_heartbeat_seconds: float = 15.0
    # Webhooks: targets on loopback/private/link-local/multicast/metadata addresses are refused
    # unless their host name or address is listed here (comma-separated).
    webhook_allowed_hosts: str = ""
    webhook_allowed_cidrs: str = ""
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 5.0  # first retry; doubles each attempt
    webhook_backoff_max_seconds: float = 3600.0
    webhook_timeout_seconds: float = 10.0
    webhook_poll_seconds: float = 1.0
    # Remote teachers (spec teacher.remote): the hosts a job may send its training tokens to
    # (comma-separated names or addresses, compared to the URL's host); empty allows none.
    remote_teacher_allowed_hosts: str = ""
    # GET /metrics (Prometheus): open when empty, else requests must send this bearer token.
    metrics_token: str = ""
    # Shared artifact storage (api/storage.py). Empty: the local disk is the store, as always.
    # ``s3://bucket/prefix``: the store is the source of truth and the data and artifact roots
    # are this host's cache. Key and secret default to the usual AWS_* variables.
    storage_url: str = ""
    s3_endpoint_url: str = ""
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = ""
    # Streamed transfers: the part size of multipart uploads and the read size (S3's minimum
    # part is 5 MiB), so memory per transfer stays near this whatever the file's size.
    storage_chunk_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # json: one JSON object per log line, with job_id/project_id (api/logging_setup.py).
    log_format: Literal["text", "json"] = "text"

    @field_validator("home", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("storage_url", mode="after")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        scheme, sep, root = value.partition("://")
        if value and (not sep or not scheme or not root.strip("/") or ".." in root.split("/")):
            raise ValueError("DISTILL_STORAGE_URL must look like s3://bucket/prefix")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'distill.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def is_embedded(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_data_root(self) -> Path:
        return (self.data_root or self.home / "data").resolve()

    @property
    def resolved_artifact_root(self) -> Path:
        return (self.artifact_root or self.home / "artifacts").resolve()

    @property
    def resolved_model_roots(self) -> list[Path]:
        roots = [Path(p) for p in self.model_roots.split(os.pathsep) if p.strip()]
        if not roots:
            roots = [self.home / "models"]
        return [r.resolve() for r in roots]

    def ensure_dirs(self) -> None:
        for path in (self.home, self.resolved_data_root, self.resolved_artifact_root):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    settings.ensure_dirs()
    return settings
