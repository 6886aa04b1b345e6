"""Fair-share claims: which queued job a worker starts when a message wakes it.

A Celery message names a job, but it is only a wake-up for its queue: the worker claims, in one
transaction, the best queued job of that queue that it can run. Best means, in order:

1. the project with the fewest running jobs (``running``, ``cancelling``, ``pausing``);
2. the project served least recently (``projects.last_started_at``, never-served first), so
   with one free worker projects take turns instead of the oldest flood going first;
3. the job's ``priority`` (0..9, higher first): it orders a project's own jobs only, since
   the two keys above already chose the project;
4. ``enqueued_at``, then the id (oldest first).

A project already running ``max_running_jobs`` (or the setting DISTILL_PROJECT_MAX_RUNNING_JOBS)
is skipped, and so is a job needing more processes (``nproc``) than the worker offers
(DISTILL_WORKER_MAX_NPROC). The limit holds under concurrent claims: the claim locks the
project's row before it counts that project's running jobs (PostgreSQL ``FOR NO KEY UPDATE``;
on SQLite the first write takes the database's single write lock), and candidate jobs are
locked ``FOR NO KEY UPDATE SKIP LOCKED``, so two workers never take the same job and never wait
on each other's candidate. The final UPDATE is still guarded by ``status = 'queued'``: a job is
never claimed twice.

No job is lost when a message starts a job other than its own: every queued job was sent one
message, and a claim that starts job Y leaves Y's message in the broker, where it wakes a worker
for the job left behind. A claim that starts nothing happens only when nothing in the queue is
runnable by that worker; what changes that (a job of the project leaving its slot) sends a
wake-up (``wake_project_queues``), and the sweeper re-sends old messages of runnable jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import timedelta

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from api.config import Settings
from api.webhooks.outbox import job_status_changed
from models import Job, JobEvent, Project, utcnow
from models.session import rows_updated, session_scope
from workers.db_retry import run_unit

log = logging.getLogger(__name__)
# States in which a worker holds the job (and so a slot of its project's limit).
LIVE_STATUSES = ("running", "cancelling", "pausing")
# Projects found at their limit by a concurrent claim are skipped; after this many, give up.
MAX_PROJECTS_TRIED = 8


def running_counts() -> Select[str, int]:
    """Running (slot-holding) jobs per project."""
    return (
        select(Job.project_id, func.count().label("running"))
        .where(Job.status.in_(LIVE_STATUSES))
        .group_by(Job.project_id)
    )


def candidates(
    *,
    queue: str,
    max_nproc: int,
    default_limit: int,
    skip_projects: Collection[str] = (),
    only: str | None = None,
) -> Select[str, str]:
    """(job id, project id) of the best runnable queued job of ``queue``, locked for update
    with SKIP LOCKED on PostgreSQL (SQLite ignores the lock clause). See the module's order."""
    running = running_counts().subquery()
    count = func.coalesce(running.c.running, 0)
    statement = (
        select(Job.id, Job.project_id)
        .join(Project, Project.id == Job.project_id)
        .outerjoin(running, running.c.project_id == Job.project_id)
        .where(Job.status == "queued", Job.queue == queue, Job.nproc <= max_nproc)
        .where(count < func.coalesce(Project.max_running_jobs, default_limit))
        .order_by(
            count,
            Project.last_started_at.asc().nulls_first(),
            Job.priority.desc(),
            Job.enqueued_at.asc().nulls_last(),
            Job.id,
        )
        .limit(1)
        .with_for_update(of=Job, skip_locked=True, key_share=True)
    )
    if skip_projects:
        statement = statement.where(Job.project_id.not_in(list(skip_projects)))
    if only is not None:
        statement = statement.where(Job.id == only)
    return statement


def _lock_project(session: Session, project_id: str, *, wait: bool) -> tuple[bool, int | None]:
    """(locked, the project's own limit). Serialises the claims of one project's jobs until the
    transaction ends. ``wait=False`` skips a project another claim holds: a claim that already
    holds one project's lock never waits for a second, so two claims cannot deadlock."""
    if session.get_bind().dialect.name == "sqlite":
        # A no-op write: SQLite's one write lock, taken before the count below is read.
        limit = session.execute(
            update(Project)
            .where(Project.id == project_id)
            .values(max_running_jobs=Project.max_running_jobs)
            .returning(Project.max_running_jobs)
            .execution_options(synchronize_session=False)
        ).scalar_one()
        return True, limit
    row = session.execute(
        select(Project.max_running_jobs)
        .where(Project.id == project_id)
        .with_for_update(key_share=True, skip_locked=not wait)
    ).first()
    return (row is not None), (row[0] if row is not None else None)


def running_in_project(session: Session, project_id: str) -> int:
    statement = select(func.count()).where(
        Job.project_id == project_id, Job.status.in_(LIVE_STATUSES)
    )
    return int(session.scalar(statement) or 0)


def claim_in_session(
    session: Session,
    settings: Settings,
    *,
    queue: str,
    worker_id: str,
    only: str | None = None,
) -> str | None:
    """Claim the best runnable queued job of ``queue`` (or only ``only``) for ``worker_id`` in
    the caller's transaction; returns its id, or None when nothing can start now."""
    now = utcnow()
    default_limit = settings.project_max_running_jobs
    skipped: set[str] = set()
    for tried in range(MAX_PROJECTS_TRIED):
        statement = candidates(
            queue=queue,
            max_nproc=settings.worker_max_nproc,
            default_limit=default_limit,
            skip_projects=skipped,
            only=only,
        )
        row = session.execute(statement).first()
        if row is None:
            return None
        job_id, project_id = row
        locked, own_limit = _lock_project(session, project_id, wait=tried == 0)
        limit = own_limit if own_limit is not None else default_limit
        if not locked or running_in_project(session, project_id) >= limit:
            skipped.add(project_id)  # at its limit after all (a concurrent claim), or busy
            continue
        took = rows_updated(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(
                status="running",
                lease_owner=worker_id,
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                attempts=Job.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False),
        )
        if took != 1:  # SQLite only: another worker took it between the read and the lock
            continue
        session.execute(
            update(Project)
            .where(Project.id == project_id)
            .values(last_started_at=now)
            .execution_options(synchronize_session=False)
        )
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        if job.started_at is None:
            job.started_at = now
        message = f"claimed by {worker_id} (attempt {job.attempts})"
        session.add(JobEvent(job_id=job_id, level="info", message=message))
        job_status_changed(session, job_id)  # webhooks, in the claim's transaction
        return job_id
    return None


def held_by(session: Session, worker_id: str) -> str | None:
    """The job this worker holds: after a retried claim whose first attempt committed."""
    statement = select(Job.id).where(Job.lease_owner == worker_id, Job.status == "running")
    return session.scalars(statement.order_by(Job.updated_at.desc())).first()


def why_not_started(session: Session, settings: Settings, job: Job) -> str:
    """Why a queued job this worker was woken for did not start: said in the job's events."""
    if job.nproc > settings.worker_max_nproc:
        return f"it needs nproc {job.nproc}; this worker offers {settings.worker_max_nproc}"
    project = session.get(Project, job.project_id)
    limit = settings.project_max_running_jobs
    if project is not None and project.max_running_jobs is not None:
        limit = project.max_running_jobs
    running = running_in_project(session, job.project_id)
    if running >= limit:
        return f"its project runs {running} of at most {limit} jobs"
    return "another project's or a higher-priority job went first"


def project_of(settings: Settings, job_id: str) -> str:
    with session_scope(settings.resolved_database_url) as session:
        return session.scalars(select(Job.project_id).where(Job.id == job_id)).one()


def wake_project_queues(settings: Settings, project_id: str) -> list[str]:
    """After a job of ``project_id`` gave up its slot: one wake-up for each queue where the
    project still has queued jobs (its best job's id, the message every wake-up carries).
    Returns the ids sent. Sending fails softly: the sweeper re-sends what stays queued."""
    from workers.dispatch import send_job

    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(
            select(Job.queue, Job.id)
            .where(Job.project_id == project_id, Job.status == "queued")
            .order_by(Job.queue, Job.priority.desc(), Job.enqueued_at.asc().nulls_last(), Job.id)
        ).all()
    best: dict[str, str] = {}
    for queue, job_id in rows:
        best.setdefault(queue, job_id)
    for queue, job_id in best.items():
        try:
            send_job(job_id, queue)
        except Exception:
            log.exception("wake-up for queue %s failed; the sweeper re-sends", queue)
    return list(best.values())


def claim_for_message(settings: Settings, job_id: str, worker_id: str) -> str | None:
    """What a worker does with a message naming ``job_id``: claim the best job of that job's
    queue (often that job, not always). The woken job's events say why it did not start when
    it did not. Raises ``JobGone`` (workers.runtime) when the id names no job."""
    from workers.runtime import JobGone

    def claim(session: Session, attempt: int) -> str | None:
        woken = session.get(Job, job_id)
        if woken is None:
            raise JobGone(job_id)
        if attempt and (held := held_by(session, worker_id)) is not None:
            return held  # an earlier attempt committed the claim before its connection broke
        claimed = claim_in_session(session, settings, queue=woken.queue, worker_id=worker_id)
        if claimed == job_id:
            return claimed
        session.refresh(woken)
        if woken.status != "queued":  # a redelivery, a duplicate, or cancelled while queued
            message = f"message dropped by {worker_id}: the job is {woken.status}"
        elif claimed is not None:
            message = (f"woke {worker_id}, which started {claimed} first (fair share); "
                       "this job stays queued")  # fmt: skip
        else:
            reason = why_not_started(session, settings, woken)
            message = f"woke {worker_id}, which left it queued: {reason}"
        session.add(JobEvent(job_id=job_id, level="info", message=message))
        return claimed

    url = settings.resolved_database_url
    return run_unit(url, claim, deadline_seconds=settings.db_retry_seconds, what="claim")
