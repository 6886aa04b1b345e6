"""The sweeper: re-queues jobs whose worker died (lease expired), fails those that lost their
worker too often, and re-enqueues jobs left ``queued`` whose message may be lost (only those
whose project is under its running-job limit: the others wait for a slot, woken then). Every worker
runs it in a thread; each change is a guarded UPDATE, so several sweepers never double up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from api.config import Settings
from api.webhooks.outbox import job_status_changed
from models import Job, Project, utcnow
from models.session import rows_updated, session_scope
from workers.dispatch import send_job
from workers.runtime import add_event
from workers.scheduling import LIVE_STATUSES, running_counts, wake_project_queues

log = logging.getLogger(__name__)


def sweep_once(settings: Settings) -> list[str]:
    """Returns the ids it re-enqueued."""
    now = utcnow()
    to_send: list[tuple[str, str]] = []
    freed: set[str] = set()  # projects whose lost job gave its slot up without being re-queued
    with session_scope(settings.resolved_database_url) as session:
        expired = session.scalars(
            select(Job).where(Job.status.in_(LIVE_STATUSES), Job.lease_expires_at < now)
        ).all()
        for job in expired:
            values, level, message = _after_lost_worker(job, settings, now)
            guard = update(Job).where(
                Job.id == job.id, Job.lease_owner == job.lease_owner, Job.status == job.status
            )
            statement = guard.values(updated_at=now, **values)
            if rows_updated(session, statement.execution_options(synchronize_session=False)) == 1:
                add_event(session, job.id, level, message, previous_owner=job.lease_owner)
                job_status_changed(session, job.id)
                if values["status"] == "queued":
                    to_send.append((job.id, job.queue))
                else:
                    freed.add(job.project_id)
        for job in _stale_queued(session, settings, now):
            # last_sent_at, not enqueued_at, moves: the job keeps its place in its project's line.
            statement = (
                update(Job)
                .where(Job.id == job.id, Job.status == "queued")
                .where(_same_or_null(Job.last_sent_at, job.last_sent_at))
                .values(last_sent_at=now)
                .execution_options(synchronize_session=False)
            )
            if rows_updated(session, statement) == 1:
                waited = int(settings.requeue_after_seconds)
                add_event(session, job.id, "info",
                          f"still queued after {waited}s (message lost or no free worker); "
                          "re-enqueued")  # fmt: skip
                to_send.append((job.id, job.queue))
    for job_id, queue in to_send:  # after the commit: enqueue only what is recorded
        try:
            send_job(job_id, queue)
        except Exception:
            log.exception("re-enqueue of %s failed; next sweep retries", job_id)
    for project_id in freed:
        wake_project_queues(settings, project_id)
    return [job_id for job_id, _ in to_send]


def _stale_queued(session: Session, settings: Settings, now: datetime) -> Sequence[Job]:
    """Queued jobs whose last message is older than ``requeue_after_seconds`` and that could
    start now: their project is under its running-job limit. A project at its limit gets a
    wake-up when one of its jobs ends (workers/scheduling.py), so its waiting jobs are not
    re-sent every interval for nothing."""
    stale_before = now - timedelta(seconds=settings.requeue_after_seconds)
    running = running_counts().subquery()
    limit = func.coalesce(Project.max_running_jobs, settings.project_max_running_jobs)
    return session.scalars(
        select(Job)
        .join(Project, Project.id == Job.project_id)
        .outerjoin(running, running.c.project_id == Job.project_id)
        .where(Job.status == "queued")
        .where(Job.enqueued_at < stale_before)  # both: a resumed job has a new enqueued_at
        .where(or_(Job.last_sent_at.is_(None), Job.last_sent_at < stale_before))
        .where(func.coalesce(running.c.running, 0) < limit)
    ).all()


def _same_or_null(column: Any, value: datetime | None) -> Any:
    return column.is_(None) if value is None else column == value


def _after_lost_worker(
    job: Job, settings: Settings, now: datetime
) -> tuple[dict[str, Any], str, str]:
    """What a job whose lease expired becomes: (column values, event level, event message)."""
    if job.status == "pausing":  # paused where it stands: resume continues from the last checkpoint
        return (
            {"status": "paused", "lease_owner": None, "lease_expires_at": None},
            "warn",
            "worker lost while pausing; paused at its last checkpoint",
        )
    if job.status == "cancelling":
        return (
            {"status": "cancelled", "finished_at": now, "lease_owner": None},
            "info",
            ("worker lost while cancelling; cancelled"),
        )
    lost = job.lease_expiries + 1
    if lost > settings.max_lease_expiries:
        error = f"the worker was lost {lost} times"
        values = {"status": "failed", "finished_at": now, "lease_owner": None,
                  "lease_expiries": lost, "error": error}  # fmt: skip
        return values, "error", error + "; giving up"
    # It keeps enqueued_at (its place in its project's line); last_sent_at dates the re-send.
    values = {"status": "queued", "lease_owner": None, "lease_expires_at": None,
              "lease_expiries": lost, "last_sent_at": now}  # fmt: skip
    return values, "warn", "worker lost; re-queued to resume from its last checkpoint"


class Sweeper(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="sweeper", daemon=True)
        self.settings = settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.sweep_interval_seconds):
            try:
                sweep_once(self.settings)
            except Exception:
                log.exception("sweep failed")

    def stop(self) -> None:
        self._stop_event.set()
