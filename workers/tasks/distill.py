"""The distillation task: receives a job id only, claims the job, runs it, records it.

``workers.distill_run`` (and torch with it) is imported when the worker boots, not after a
claim: an import that takes longer than the lease would lose the job it just claimed."""

from __future__ import annotations

import logging

from api.config import get_settings
from workers.celery_app import DISTILL_TASK, celery_app
from workers.distill_run import run_claimed_job
from workers.runtime import JobGone, make_worker_id
from workers.scheduling import claim_for_message, project_of, wake_project_queues

log = logging.getLogger(__name__)
WORKER_ID = make_worker_id()


@celery_app.task(name=DISTILL_TASK, ignore_result=True)
def run_distill_job(job_id: str) -> None:
    """The message is a wake-up for ``job_id``'s queue: the claim starts the fairest runnable
    job there (workers/scheduling.py), which is often ``job_id`` itself."""
    settings = get_settings()
    try:
        claimed = claim_for_message(settings, job_id, WORKER_ID)
    except JobGone:
        log.warning("job %s does not exist; message dropped", job_id)
        return
    if claimed is None:  # nothing runnable, or a redelivery: never run a job twice at once
        log.info("message for job %s started nothing", job_id)
        return
    try:
        run_claimed_job(settings, claimed, WORKER_ID)
    finally:  # its slot is free: queued jobs of its project may start now
        try:
            wake_project_queues(settings, project_of(settings, claimed))
        except Exception:
            log.exception("wake-up after %s failed; the sweeper re-sends", claimed)
