"""Worker heartbeats: each worker process keeps one ``worker_heartbeats`` row fresh, so
``/metrics`` can count live workers per queue and show how long ago each was last seen.

A thread started on Celery's ``worker_ready`` (beside the sweeper) writes the row at once and
then every ``DISTILL_HEARTBEAT_SECONDS`` (the same interval that renews job leases).
``current_job_id`` is the job this worker holds the lease of: read from ``jobs``, the one
place the truth about who runs what lives. A clean shutdown deletes the row; a crashed worker's
row stays, ageing, until it is a day old (then any worker's heartbeat prunes it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from api.config import Settings
from models import Job, utcnow
from models.session import rows_updated, session_scope
from models.tables import WorkerHeartbeat
from workers.runtime import LIVE_STATUSES

log = logging.getLogger(__name__)

# Rows of workers unseen this long are deleted: long past any alert, and autoscaled fleets
# would otherwise grow the table (and the metric's series) without end.
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    queues: Sequence[str]
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=utcnow)


def beat_once(settings: Settings, worker: WorkerIdentity) -> None:
    """Upsert this worker's row (an UPDATE, then an INSERT when there was none: only this
    process writes its own row, so the two never race) and prune long-dead rows."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as session:
        current = session.scalar(
            select(Job.id)
            .where(Job.lease_owner == worker.worker_id, Job.status.in_(LIVE_STATUSES))
            .limit(1)
        )
        values = {"last_seen_at": now, "current_job_id": current, "queues": list(worker.queues)}
        statement = (
            update(WorkerHeartbeat)
            .where(WorkerHeartbeat.worker_id == worker.worker_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if rows_updated(session, statement) == 0:
            session.add(
                WorkerHeartbeat(
                    worker_id=worker.worker_id,
                    hostname=worker.hostname,
                    pid=worker.pid,
                    started_at=worker.started_at,
                    **values,
                )
            )
        session.execute(
            delete(WorkerHeartbeat)
            .where(WorkerHeartbeat.last_seen_at < now - FORGET_AFTER)
            .execution_options(synchronize_session=False)
        )


def forget(settings: Settings, worker_id: str) -> None:
    """Delete this worker's row: it stopped on purpose, so it is neither alive nor lost."""
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            delete(WorkerHeartbeat)
            .where(WorkerHeartbeat.worker_id == worker_id)
            .execution_options(synchronize_session=False)
        )


class Heartbeat(threading.Thread):
    """Beats until stopped; a failed beat (database down) is logged and the next one retries."""

    def __init__(self, settings: Settings, worker: WorkerIdentity) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.settings = settings
        self.worker = worker
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            try:
                beat_once(self.settings, self.worker)
            except Exception:
                log.exception("worker heartbeat failed; retrying next interval")
            if self._stop_event.wait(self.settings.heartbeat_seconds):
                return

    def stop(self) -> None:
        """Stop beating and delete the row (best effort: the row ages out if this fails)."""
        self._stop_event.set()
        self.join(timeout=self.settings.heartbeat_seconds + 5)
        try:
            forget(self.settings, self.worker.worker_id)
        except Exception:
            log.exception("could not delete worker heartbeat row %s", self.worker.worker_id)


_current: Heartbeat | None = None


def start_worker_heartbeat(settings: Settings, worker_id: str, queues: Sequence[str]) -> None:
    """Called once per worker process on ``worker_ready`` (``workers/celery_app.py``)."""
    global _current
    _current = Heartbeat(settings, WorkerIdentity(worker_id=worker_id, queues=list(queues)))
    _current.start()


def stop_worker_heartbeat() -> None:
    """Called on ``worker_shutdown``: the row goes with the worker."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None
