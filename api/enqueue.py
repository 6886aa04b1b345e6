"""Enqueue after commit: job ids are collected during a unit of work and sent only once the
rows that name them are committed; on rollback they are dropped. A send that fails after the
commit leaves the job ``queued`` for the sweeper to re-enqueue, so nothing is lost."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class PendingEnqueues:
    items: list[tuple[str, str]] = field(default_factory=list)  # (job_id, queue)

    def add(self, job_id: str, queue: str) -> None:
        self.items.append((job_id, queue))

    def flush(self) -> None:
        from workers.dispatch import send_job

        items, self.items = self.items, []
        for job_id, queue in items:
            try:
                send_job(job_id, queue)
            except Exception:  # the sweeper re-enqueues jobs left queued
                log.exception("could not enqueue job %s; the sweeper will retry", job_id)

    def drop(self) -> None:
        self.items.clear()
