"""The webhook outbox: a job's status change writes one delivery row per subscribed endpoint
in the *same* transaction as the change, so a change is announced exactly when it commits
(a rollback takes both back). The worker-side deliverer sends the rows later
(``workers/webhook_delivery.py``). Imported by the API and the workers; needs only ``models``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Job, WebhookDelivery, WebhookEndpoint, new_id, utcnow

JOB_STATUSES = (
    "queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed", "cancelled"
)  # fmt: skip
JOB_EVENT_TYPES = tuple(f"job.{status}" for status in JOB_STATUSES)
ALL_JOB_EVENTS = "job.*"


def subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    types = endpoint.event_types or [ALL_JOB_EVENTS]
    return event_type in types or (ALL_JOB_EVENTS in types and event_type.startswith("job."))


def job_payload(job: Job, event_type: str) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "type": event_type,
        "timestamp": utcnow().isoformat(),
        "data": {
            "id": job.id,
            "kind": job.kind,
            "name": job.name,
            "status": job.status,
            "metadata": job.metadata_,
            "progress": {"step": job.progress_step, "total_steps": job.total_steps},
            "attempts": job.attempts,
            "error": job.error,
            "output_model_id": job.output_model_id,
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
        },
    }


def job_status_changed(session: Session, job_id: str) -> int:
    """Call right after a job's status changed, in the session that changed it (never
    commits). Returns how many deliveries were queued."""
    session.flush()
    job = session.execute(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if job is None:
        return 0
    event_type = f"job.{job.status}"
    endpoints = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.project_id == job.project_id)
        .order_by(WebhookEndpoint.id)
    ).all()
    targets = [e for e in endpoints if subscribed(e, event_type)]
    if not targets:
        return 0
    payload, message_id, now = job_payload(job, event_type), new_id("msg"), utcnow()
    for endpoint in targets:
        session.add(
            WebhookDelivery(message_id=message_id, endpoint_id=endpoint.id,
                            project_id=job.project_id, event_type=event_type, payload=payload,
                            status="pending", attempts=0, next_attempt_at=now, created_at=now)
        )  # fmt: skip
    session.flush()
    return len(targets)
