"""Queries of the OpenAI-compatible surface that the datasets and jobs repositories do not have.
Every query names the caller's project."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from models import Dataset, Job, JobEvent, Metric

TOKENS_METRIC = "train/tokens"


def files_page(
    session: Session,
    *,
    project_id: str,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> list[Dataset]:
    """Up to ``limit + 1`` datasets after the ``after`` id in the given creation order (ids are
    time-ordered), so the caller can tell whether there is more."""
    stmt = select(Dataset).where(Dataset.project_id == project_id)
    if after:
        stmt = stmt.where(Dataset.id > after if order == "asc" else Dataset.id < after)
    ordering = Dataset.id.asc() if order == "asc" else Dataset.id.desc()
    return list(session.scalars(stmt.order_by(ordering).limit(limit + 1)))


def jobs_using_dataset(session: Session, *, project_id: str, dataset_id: str) -> list[str]:
    """Ids of the project's jobs whose spec names the dataset as its train or eval set."""
    train = Job.spec[("dataset", "train")].as_string()
    evaluation = Job.spec[("dataset", "eval")].as_string()
    stmt = (
        select(Job.id)
        .where(Job.project_id == project_id, or_(train == dataset_id, evaluation == dataset_id))
        .order_by(Job.id)
    )
    return list(session.scalars(stmt))


def delete_dataset(session: Session, row: Dataset) -> None:
    session.delete(row)
    session.flush()


def events_page(
    session: Session, *, project_id: str, job_id: str, before_id: int | None, limit: int
) -> list[JobEvent]:
    """Newest first, as that API lists events: up to ``limit + 1`` events older than
    ``before_id``."""
    stmt = (
        select(JobEvent)
        .join(Job, Job.id == JobEvent.job_id)
        .where(Job.project_id == project_id, JobEvent.job_id == job_id)
    )
    if before_id is not None:
        stmt = stmt.where(JobEvent.id < before_id)
    return list(session.scalars(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)))


def metrics_at_steps(
    session: Session, *, project_id: str, job_id: str, keys: tuple[str, ...], steps: list[int]
) -> dict[tuple[str, int], float]:
    if not steps:
        return {}
    stmt = (
        select(Metric.key, Metric.step, Metric.value)
        .join(Job, Job.id == Metric.job_id)
        .where(
            Job.project_id == project_id,
            Metric.job_id == job_id,
            Metric.key.in_(keys),
            Metric.step.in_(steps),
        )
    )
    return {(key, step): value for key, step, value in session.execute(stmt)}


def trained_tokens(session: Session, *, project_id: str, job_id: str) -> int | None:
    """Sum of the per-step token counts the recipe records; None for a job that recorded none."""
    stmt = (
        select(func.sum(Metric.value))
        .join(Job, Job.id == Metric.job_id)
        .where(Job.project_id == project_id, Metric.job_id == job_id, Metric.key == TOKENS_METRIC)
    )
    total = session.scalar(stmt)
    return None if total is None else int(total)
