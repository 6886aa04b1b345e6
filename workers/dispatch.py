"""Sending a job id to its queue. Only ids travel: the task re-reads the job from the database."""

from __future__ import annotations


def send_job(job_id: str, queue: str) -> None:
    from workers.celery_app import DISTILL_TASK, celery_app

    celery_app.send_task(DISTILL_TASK, args=[job_id], queue=queue)
