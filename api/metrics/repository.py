"""The queries behind ``/metrics``. Unlike every other repository these span all projects:
the endpoint is the operator's, not a project's. Each is one aggregate statement, so a scrape
costs a handful of indexed reads however many jobs there are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from models import Job, Metric
from models.tables import WorkerHeartbeat

# The recipe records both per optimizer step: tokens / (tokens per second) is that step's time.
TOKENS_KEY, TOKENS_PER_S_KEY = "train/tokens", "train/tokens_per_s"


@dataclass(frozen=True)
class QueueWaiting:
    queue: str
    jobs: int
    waiting_since: datetime


@dataclass(frozen=True)
class StepTime:
    queue: str
    jobs: int  # running jobs that recorded a step
    mean_seconds: float


def count_jobs_by_status_and_kind(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind)
    )
    return {(status, kind): int(count) for status, kind, count in rows}


def queued_jobs_by_queue(session: Session) -> list[QueueWaiting]:
    """Jobs in status ``queued`` per queue, and when the longest-waiting one joined the line:
    ``enqueued_at`` (set at creation and at resume; the sweeper's re-sends leave it alone, they
    move ``last_sent_at``), or the creation time of a row written without one."""
    since = func.coalesce(Job.enqueued_at, Job.created_at)
    rows = session.execute(
        select(Job.queue, func.count(), func.min(since))
        .where(Job.status == "queued")
        .group_by(Job.queue)
    )
    # coalesce() and min() keep their argument's type: the UTC column type makes them aware.
    return [QueueWaiting(queue=q, jobs=int(n), waiting_since=since) for q, n, since in rows]


def jobs_holding_a_worker_by_queue(session: Session) -> dict[str, int]:
    """Jobs a worker is busy with (running, cancelling, pausing), per queue."""
    rows = session.execute(
        select(Job.queue, func.count())
        .where(Job.status.in_(("running", "cancelling", "pausing")))
        .group_by(Job.queue)
    )
    return {queue: int(count) for queue, count in rows}


def recent_step_seconds(session: Session, *, last_steps: int) -> list[StepTime]:
    """Mean time of the last ``last_steps`` optimizer steps of each ``running`` job, averaged
    per queue over all those steps (each job counts with up to ``last_steps`` steps)."""
    rate, tokens = aliased(Metric), aliased(Metric)
    per_step = (
        select(
            Job.queue.label("queue"),
            Job.id.label("job_id"),
            (tokens.value / rate.value).label("seconds"),
            func.row_number().over(partition_by=Job.id, order_by=rate.step.desc()).label("recent"),
        )
        .join(rate, rate.job_id == Job.id)
        .join(tokens, (tokens.job_id == Job.id) & (tokens.step == rate.step))
        .where(Job.status == "running")
        .where(rate.key == TOKENS_PER_S_KEY, tokens.key == TOKENS_KEY, rate.value > 0)
        .subquery()
    )
    rows = session.execute(
        select(per_step.c.queue, func.count(func.distinct(per_step.c.job_id)),
               func.avg(per_step.c.seconds))
        .where(per_step.c.recent <= last_steps)
        .group_by(per_step.c.queue)
    )  # fmt: skip
    return [StepTime(queue=q, jobs=int(n), mean_seconds=float(s)) for q, n, s in rows]


def worker_heartbeats(session: Session) -> list[WorkerHeartbeat]:
    return list(session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.worker_id)))
