"""Job runtime on the worker side: claim, lease and heartbeat, status transitions, and the
sinks (metrics, events, checkpoints) that the pure-torch recipe calls. Each write is its own
short committed unit of work; each one checks that this worker still holds the lease."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from api.config import Settings
from models import Checkpoint, Job, JobEvent, Metric, new_id, utcnow
from models.session import rows_updated, session_scope

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 3


class LeaseLost(RuntimeError):
    """Another worker took the job over (this worker's lease expired): stop, write nothing."""


class JobGone(LookupError):
    """The job id names no job (deleted, or a message from another database)."""


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.resolved_artifact_root / "jobs" / job_id


def add_event(session: Session, job_id: str, level: str, message: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, level=level, message=message, data=data))


def claim_job(settings: Settings, job_id: str, worker_id: str) -> bool:
    """One atomic UPDATE: only a ``queued`` job is taken, so a redelivered message for a job
    that a live worker holds (``running``) is dropped. Expired leases go back to ``queued``
    through the sweeper, which also counts them."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as session:
        if session.get(Job, job_id) is None:
            raise JobGone(job_id)
        claimed = rows_updated(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(
                status="running",
                lease_owner=worker_id,
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                attempts=Job.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False),
        )
        if claimed != 1:
            return False
        job = session.get(Job, job_id)
        assert job is not None
        session.refresh(job)
        if job.started_at is None:
            job.started_at = now
        add_event(session, job_id, "info", f"claimed by {worker_id} (attempt {job.attempts})")
        return True


class LeaseKeeper(threading.Thread):
    """Renews the lease every ``heartbeat_seconds`` and notices cancel requests and lost leases."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def renew(self) -> None:
        now = utcnow()
        with session_scope(self.settings.resolved_database_url) as session:
            status = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.lease_owner == self.worker_id)
                .where(Job.status.in_(("running", "cancelling")))
                .values(lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds))
                .returning(Job.status)
            ).scalar_one_or_none()
        if status is None:
            self.lost.set()
        elif status == "cancelling":
            self.cancel_requested.set()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.heartbeat_seconds):
            try:
                self.renew()
            except Exception:  # a database blip must not kill the job; the lease has slack
                log.exception("lease renewal failed for %s", self.job_id)

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lost.is_set()

    def stop(self) -> None:
        self._stop_event.set()


def _hold_lease(session: Session, job_id: str, worker_id: str, **values: Any) -> None:
    """Touch the job row only while holding the lease; raises LeaseLost otherwise."""
    touched = rows_updated(
        session,
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id)
        .where(Job.status.in_(("running", "cancelling")))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False),
    )
    if touched != 1:
        raise LeaseLost(job_id)


class JobRecorder:
    """The callables handed to ``ml``: metrics in batches, events, checkpoints."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.url = settings.resolved_database_url

    def metrics(self, points: list[Any]) -> None:
        if not points:
            return
        steps = [p.step for p in points if p.key.startswith("train/")]
        with session_scope(self.url) as session:
            values: dict[str, Any] = {"progress_step": max(steps)} if steps else {}
            _hold_lease(session, self.job_id, self.worker_id, **values)
            now = utcnow()
            session.add_all(
                Metric(job_id=self.job_id, key=p.key, step=p.step, value=float(p.value),
                       created_at=now)
                for p in points
            )  # fmt: skip

    def event(self, level: str, message: str, data: dict[str, Any]) -> None:
        with session_scope(self.url) as session:
            add_event(session, self.job_id, level, message, **_jsonable(data))

    def set_fields(self, **values: Any) -> None:
        with session_scope(self.url) as session:
            _hold_lease(session, self.job_id, self.worker_id, **values)

    def checkpoint(self, step: int, path: Path) -> None:
        digest, size = _hash_tree(path)
        with session_scope(self.url) as session:
            _hold_lease(session, self.job_id, self.worker_id)
            session.execute(
                delete(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.step == step)
            )
            session.add(
                Checkpoint(id=new_id("ckpt"), job_id=self.job_id, step=step, path=str(path),
                           bytes=size, sha256=digest)
            )  # fmt: skip
            old = list(
                session.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == self.job_id, Checkpoint.step < step)
                    .order_by(Checkpoint.step.desc())
                    .offset(KEEP_CHECKPOINTS - 1)
                )
            )
            for row in old:
                session.delete(row)
        for row in old:  # files go only after the rows that name them are gone
            shutil.rmtree(row.path, ignore_errors=True)

    def resume_point(self) -> Path | None:
        """The newest intact checkpoint. Metrics and checkpoints after it are dropped: the
        resumed run records those steps again, so no step is ever recorded twice."""
        with session_scope(self.url) as session:
            rows = list(
                session.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == self.job_id)
                    .order_by(Checkpoint.step.desc())
                )
            )
            chosen: Checkpoint | None = None
            for row in rows:
                path = Path(row.path)
                if path.is_dir() and _hash_tree(path)[0] == row.sha256:
                    chosen = row
                    break
                add_event(session, self.job_id, "warn",
                          f"checkpoint at step {row.step} is missing or corrupt; skipped",
                          step=row.step)  # fmt: skip
            step = chosen.step if chosen else 0
            session.execute(delete(Metric).where(Metric.job_id == self.job_id, Metric.step > step))
            session.execute(
                delete(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.step > step)
            )
            return Path(chosen.path) if chosen else None

    def finish(self, status: str, **values: Any) -> None:
        with session_scope(self.url) as session:
            _hold_lease(
                session,
                self.job_id,
                self.worker_id,
                status=status,
                finished_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
                **values,
            )


def _hash_tree(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _jsonable(value)
        elif isinstance(value, (list, tuple)):
            out[key] = [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
        else:
            out[key] = str(value)
    return out
