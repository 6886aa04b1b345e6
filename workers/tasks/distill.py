"""The distillation task: receives a job id only, claims the job, runs it, records it.

``workers.distill_run`` (and torch with it) is imported when the worker boots, not after a
claim: an import that takes longer than the lease would lose the job it just claimed."""

from __future__ import annotations

import logging

from api.config import get_settings
from workers.celery_app import DISTILL_TASK, celery_app
from workers.distill_run import run_claimed_job
from workers.runtime import JobGone, claim_job, make_worker_id

log = logging.getLogger(__name__)
WORKER_ID = make_worker_id()


@celery_app.task(name=DISTILL_TASK, ignore_result=True)
def run_distill_job(job_id: str) -> None:
    settings = get_settings()
    try:
        claimed = claim_job(settings, job_id, WORKER_ID)
    except JobGone:
        log.warning("job %s does not exist; message dropped", job_id)
        return
    if not claimed:  # redelivered, or taken by a live worker: never run a job twice at once
        log.info("job %s is not queued; message dropped", job_id)
        return
    run_claimed_job(settings, job_id, WORKER_ID)
