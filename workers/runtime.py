"""Job runtime on the worker side: claim, lease and heartbeat, status transitions, and the
sinks (metrics, events, checkpoints) that the pure-torch recipe calls. Each write is its own
short committed unit of work; each one checks that this worker still holds the lease, and is
retried whole when the database connection breaks (``workers.db_retry``), so every write here is
idempotent: a retry after a commit whose reply was lost changes nothing."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Insert, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.config import Settings
from api.storage import ArtifactCorrupt, StorageUnavailable, open_store
from api.webhooks.outbox import job_status_changed
from ml.distillation.checkpointing import directory_sha256
from models import Checkpoint, Job, JobEvent, Metric, new_id, utcnow
from models.session import rows_updated, session_scope
from workers.db_retry import run_unit

# LIVE_STATUSES: where a worker holds the job (cancelling and pausing stop it between steps).
from workers.scheduling import LIVE_STATUSES, claim_in_session, why_not_started

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 3
T = TypeVar("T")


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
    """Claim this very job, under the same rules as any claim (``workers.scheduling``: its
    project under its limit, its nproc within the worker's): only a ``queued`` job is taken, so
    a redelivered message for a job that a live worker holds (``running``) is dropped, with an
    event saying so. Expired leases go back to ``queued`` through the sweeper, which also counts
    them. Workers woken by a message call ``scheduling.claim_for_message`` instead, which may
    start a fairer job of the same queue."""

    def claim(session: Session, attempt: int) -> bool:
        job = session.get(Job, job_id)
        if job is None:
            raise JobGone(job_id)
        if attempt and job.lease_owner == worker_id and job.status == "running":
            return True  # an earlier attempt committed the claim before its connection broke
        claimed = claim_in_session(session, settings, queue=job.queue, worker_id=worker_id,
                                   only=job_id)  # fmt: skip
        if claimed == job_id:
            return True
        session.refresh(job)
        # Said in the job's events, not only the worker log: a redelivered message (visibility
        # timeout, a sweeper re-send, a duplicate) or one for a job cancelled while queued.
        if job.status == "queued":
            reason = why_not_started(session, settings, job)
            add_event(session, job_id, "info", f"not started by {worker_id}: {reason}")
        else:
            add_event(session, job_id, "info",
                      f"message dropped by {worker_id}: the job is {job.status}")  # fmt: skip
        return False

    url = settings.resolved_database_url
    return run_unit(url, claim, deadline_seconds=settings.db_retry_seconds, what="claim")


class LeaseKeeper(threading.Thread):
    """Renews the lease every ``heartbeat_seconds`` and notices cancel requests and lost leases."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.cancel_requested = threading.Event()
        self.pause_requested = threading.Event()
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def renew(self) -> None:
        now = utcnow()
        with session_scope(self.settings.resolved_database_url) as session:
            status = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.lease_owner == self.worker_id)
                .where(Job.status.in_(LIVE_STATUSES))
                .values(lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds))
                .returning(Job.status)
            ).scalar_one_or_none()
        if status is None:
            self.lost.set()
        elif status == "cancelling":
            self.cancel_requested.set()
        elif status == "pausing":
            self.pause_requested.set()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.heartbeat_seconds):
            try:
                self.renew()
            except Exception:  # a database blip must not kill the job; the lease has slack
                log.exception("lease renewal failed for %s", self.job_id)

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.pause_requested.is_set() or self.lost.is_set()

    def stop(self) -> None:
        self._stop_event.set()


def _hold_lease(session: Session, job_id: str, worker_id: str, **values: Any) -> None:
    """Touch the job row only while holding the lease; raises LeaseLost otherwise."""
    touched = rows_updated(
        session,
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id)
        .where(Job.status.in_(LIVE_STATUSES))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False),
    )
    if touched != 1:
        raise LeaseLost(job_id)
    if "status" in values:  # finish() and any other worker-side transition
        job_status_changed(session, job_id)


class JobRecorder:
    """The callables handed to ``ml``: metrics in batches, events, checkpoints. Each call is one
    unit of work, retried whole while the database is unreachable (``db_retry_seconds``)."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.url = settings.resolved_database_url

    def _unit(self, work: Callable[[Session, int], T], what: str) -> T:
        tries: list[int] = []

        def counted(session: Session, attempt: int) -> T:
            tries.append(attempt)
            return work(session, attempt)

        result = run_unit(self.url, counted, deadline_seconds=self.settings.db_retry_seconds,
                          what=f"{what} of {self.job_id}")  # fmt: skip
        if len(tries) > 1:  # the outage goes into the job's story, once it is over
            message = f"database unreachable; the {what} write succeeded on try {len(tries)}"
            self.event("warn", message, {"write": what, "tries": len(tries)})
        return result

    def metrics(self, points: list[Any]) -> None:
        if not points:
            return
        steps = [p.step for p in points if p.key.startswith("train/")]
        values: dict[str, Any] = {"progress_step": max(steps)} if steps else {}

        def write(session: Session, _attempt: int) -> None:
            _hold_lease(session, self.job_id, self.worker_id, **values)
            now = utcnow()
            rows = [{"job_id": self.job_id, "key": p.key, "step": p.step,
                     "value": float(p.value), "created_at": now} for p in points]  # fmt: skip
            session.execute(_insert_or_ignore_metrics(session), rows)

        self._unit(write, "metrics")

    def event(self, level: str, message: str, data: dict[str, Any]) -> None:
        # Not deduplicated: a retry after a commit whose reply was lost could repeat an event
        # (events explain; they are never counted like metrics).
        payload = _jsonable(data)
        self._unit(
            lambda session, _: add_event(session, self.job_id, level, message, **payload), "event"
        )

    def set_fields(self, **values: Any) -> None:
        self._unit(
            lambda session, _: _hold_lease(session, self.job_id, self.worker_id, **values),
            "set_fields",
        )

    def checkpoint(self, step: int, path: Path) -> None:
        digest, size = hash_tree(path)
        store = open_store(self.settings)
        store.upload_dir(path)  # in the shared store before any row names it (no-op on disk)

        def record(session: Session, _attempt: int) -> list[Checkpoint]:
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
            return old

        old = self._unit(record, "checkpoint")
        for row in old:  # files go only after the rows that name them are gone
            local = store.localize(row.path)
            shutil.rmtree(local, ignore_errors=True)
            try:
                store.remove_dir(local)
            except StorageUnavailable:  # an orphan in the store costs space, not correctness
                log.warning("could not delete checkpoint %s from the store", local.name)

    def resume_point(self) -> Path | None:
        """The newest intact checkpoint. Metrics and checkpoints after it are dropped: the
        resumed run records those steps again, so no step is ever recorded twice. With shared
        storage, checkpoints written on another host are fetched first (outside any database
        transaction), newest first, until one arrives intact."""
        store = open_store(self.settings)
        if store.is_remote:
            self._fetch_checkpoints()

        def choose(session: Session, _attempt: int) -> Path | None:
            rows = list(
                session.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == self.job_id)
                    .order_by(Checkpoint.step.desc())
                )
            )
            chosen: Checkpoint | None = None
            for row in rows:
                path = store.localize(row.path)
                if path.is_dir() and hash_tree(path)[0] == row.sha256:
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
            return store.localize(chosen.path) if chosen else None

        return self._unit(choose, "resume_point")

    def _fetch_checkpoints(self) -> None:
        store = open_store(self.settings)

        def listed(session: Session, _attempt: int) -> list[tuple[int, str, str]]:
            query = select(Checkpoint).where(Checkpoint.job_id == self.job_id)
            rows = session.scalars(query.order_by(Checkpoint.step.desc()))
            return [(r.step, r.path, r.sha256) for r in rows]

        for step, recorded, sha256 in self._unit(listed, "checkpoint list"):
            local = store.localize(recorded)
            if local.is_dir() and hash_tree(local)[0] == sha256:
                return
            shutil.rmtree(local, ignore_errors=True)  # a stale cache entry: the store decides
            try:
                store.ensure_dir(local, sha256)
                return
            except (ArtifactCorrupt, StorageUnavailable, ValueError) as exc:
                log.warning("checkpoint at step %s not fetched: %s", step, exc)

    def finish(self, status: str, **values: Any) -> None:
        def write(session: Session, attempt: int) -> None:
            try:
                _hold_lease(session, self.job_id, self.worker_id, status=status,
                            finished_at=utcnow(), lease_owner=None, lease_expires_at=None,
                            **values)  # fmt: skip
            except LeaseLost:
                job = session.get(Job, self.job_id)
                if not (attempt and job is not None and job.status == status):
                    raise  # not "an earlier attempt already finished it": the lease is gone

        self._unit(write, "finish")


def _insert_or_ignore_metrics(session: Session) -> Insert:
    """INSERT ... ON CONFLICT (job_id, key, step) DO NOTHING in either dialect: a retried batch
    whose first attempt committed adds nothing the second time."""
    dialect = session.get_bind().dialect.name
    build = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return build(Metric).on_conflict_do_nothing(index_elements=["job_id", "key", "step"])


def hash_tree(path: Path) -> tuple[str, int]:
    """(sha256, bytes) of a checkpoint directory: the one definition the API checks too."""
    return directory_sha256(path)


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
