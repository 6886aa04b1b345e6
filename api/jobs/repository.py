"""Queries on jobs and what they record. Every query names the project."""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from models import Checkpoint, Job, JobEvent, Metric


def add(session: Session, row: Job | JobEvent) -> None:
    session.add(row)
    session.flush()


def get(session: Session, *, project_id: str, job_id: str, for_update: bool = False) -> Job | None:
    stmt = select(Job).where(Job.project_id == project_id, Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def list_page(
    session: Session,
    *,
    project_id: str,
    cursor: str | None,
    limit: int,
    status: str | None,
    kind: str | None,
    metadata: dict[str, str],
) -> list[Job]:
    stmt = select(Job).where(Job.project_id == project_id)
    if status:
        stmt = stmt.where(Job.status == status)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    for key, value in metadata.items():
        stmt = stmt.where(Job.metadata_[key].as_string() == value)
    if cursor:
        stmt = stmt.where(Job.id < cursor)
    return list(session.scalars(stmt.order_by(Job.id.desc()).limit(limit + 1)))


def list_events(
    session: Session, *, job_id: str, after_id: int | None, limit: int
) -> list[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after_id is not None:
        stmt = stmt.where(JobEvent.id > after_id)
    return list(session.scalars(stmt.order_by(JobEvent.id).limit(limit)))


def list_metrics(
    session: Session,
    *,
    job_id: str,
    key: str | None,
    step_min: int | None,
    step_max: int | None,
    limit: int,
) -> list[Metric]:
    stmt = select(Metric).where(Metric.job_id == job_id)
    if key:
        stmt = stmt.where(Metric.key == key)
    if step_min is not None:
        stmt = stmt.where(Metric.step >= step_min)
    if step_max is not None:
        stmt = stmt.where(Metric.step <= step_max)
    return list(session.scalars(stmt.order_by(Metric.key, Metric.step).limit(limit)))


def list_checkpoints(session: Session, *, job_id: str) -> list[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
    return list(session.scalars(stmt))


def queue_position(session: Session, *, job: Job) -> int:
    """1-based place of a queued ``job`` among the queued jobs of its queue, oldest first.

    The one query that counts other projects' rows: a queue is shared, so the place depends on
    them; only the number leaves this function, never which jobs are ahead."""
    ahead = select(func.count()).where(
        Job.status == "queued",
        Job.queue == job.queue,
        or_(
            Job.enqueued_at < job.enqueued_at,
            and_(Job.enqueued_at == job.enqueued_at, Job.id < job.id),
        ),
    )
    return int(session.scalar(ahead) or 0) + 1
