"""Job rules: validate and resolve a spec, create, list, cancel, pause, resume. Never commits."""

from __future__ import annotations

import builtins
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.config import Settings
from api.enqueue import PendingEnqueues
from api.errors import Conflict, InvalidInput, NotFound, field_error
from api.jobs import repository
from api.jobs.resolution import resolve_distill
from api.jobs.resolution_edit import resolve_edit, resolve_inject
from api.jobs.spec import JOB_KINDS, DistillSpec
from api.jobs.spec_edit import EditSpec, InjectSpec
from api.webhooks.outbox import job_status_changed
from models import Checkpoint, Job, JobEvent, Metric, new_id, utcnow

TERMINAL = ("succeeded", "failed", "cancelled")


class JobNotCancellable(Conflict):
    title = "Job not cancellable"


class JobNotPausable(Conflict):
    title = "Job not pausable"


class JobNotResumable(Conflict):
    title = "Job not resumable"


JobSpec = DistillSpec | EditSpec | InjectSpec
SPEC_MODELS: dict[str, type[DistillSpec] | type[EditSpec] | type[InjectSpec]] = {
    "distill": DistillSpec,
    "edit": EditSpec,
    "inject": InjectSpec,
}


def parse_job_spec(body: Any) -> JobSpec:
    """The spec of any kind, parsed strictly; errors name every bad field path."""
    body = without_dry_run(body)
    if not isinstance(body, dict):
        raise field_error(["body"], "the job spec must be a JSON object")
    kind = body.get("kind")
    if kind not in JOB_KINDS:
        raise field_error(["body", "kind"], f"must be one of {', '.join(JOB_KINDS)}")
    try:
        return SPEC_MODELS[kind].model_validate(body)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", *err["loc"]], "msg": err["msg"].removeprefix("Value error, ")}
            for err in exc.errors()
        ]
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{where}: {first['msg']}", errors=errors) from exc


def parse_spec(body: Any) -> DistillSpec:
    """A distill spec (the dry run's estimates are for distillation jobs)."""
    spec = parse_job_spec(body)
    if not isinstance(spec, DistillSpec):
        raise field_error(
            ["body", "kind"], f"a dry run estimates 'distill' jobs, not '{spec.kind}'"
        )
    return spec


def resolve_job_spec(
    session: Session, settings: Settings, project_id: str, spec: JobSpec
) -> dict[str, Any]:
    if isinstance(spec, EditSpec):
        return resolve_edit(session, settings, project_id, spec)
    if isinstance(spec, InjectSpec):
        return resolve_inject(session, settings, project_id, spec)
    return resolve_distill(session, settings, project_id, spec)


def without_dry_run(body: Any) -> Any:
    """The spec without the request-level ``dry_run`` flag (not part of the stored spec)."""
    if isinstance(body, dict) and "dry_run" in body:
        return {k: v for k, v in body.items() if k != "dry_run"}
    return body


def is_dry_run(body: Any) -> bool:
    """``dry_run: true`` in a create body; anything but a boolean there is a 422."""
    if not isinstance(body, dict) or "dry_run" not in body:
        return False
    if not isinstance(body["dry_run"], bool):
        raise field_error(["body", "dry_run"], "must be true or false")
    return body["dry_run"]


def create(
    *,
    session: Session,
    settings: Settings,
    enqueues: PendingEnqueues,
    project_id: str,
    body: Any,
) -> Job:
    spec = parse_job_spec(body)
    resolved = resolve_job_spec(session, settings, project_id, spec)
    now = utcnow()
    job = Job(
        id=new_id("job"),
        project_id=project_id,
        kind=spec.kind,
        name=spec.name,
        status="queued",
        spec=spec.model_dump(mode="json"),
        resolved=resolved,
        metadata_=dict(spec.metadata),
        queue=spec.resources.queue,
        priority=spec.priority,
        nproc=spec.resources.nproc,
        enqueued_at=now,
    )
    repository.add(session, job)
    repository.add(
        session, JobEvent(job_id=job.id, level="info", message="job validated and queued")
    )
    job_status_changed(session, job.id)  # webhooks, in this transaction
    enqueues.add(job.id, job.queue)
    return job


def get_or_raise(
    *, session: Session, project_id: str, job_id: str, for_update: bool = False
) -> Job:
    job = repository.get(session, project_id=project_id, job_id=job_id, for_update=for_update)
    if job is None:
        raise NotFound(f"Job {job_id} does not exist.")
    return job


def list(  # noqa: A001 - the house vocabulary
    *,
    session: Session,
    project_id: str,
    cursor: str | None,
    limit: int,
    status: str | None,
    kind: str | None,
    metadata: dict[str, str],
) -> tuple[builtins.list[Job], str | None]:
    rows = repository.list_page(
        session,
        project_id=project_id,
        cursor=cursor,
        limit=limit,
        status=status,
        kind=kind,
        metadata=metadata,
    )
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def cancel(*, session: Session, project_id: str, job_id: str) -> Job:
    """Queued jobs end at once; running ones go to ``cancelling`` and the worker stops between
    steps. Cancelling a job already cancelling is a no-op; a finished job is a 409."""
    job = get_or_raise(session=session, project_id=project_id, job_id=job_id, for_update=True)
    if job.status in TERMINAL:
        raise JobNotCancellable(f"Job {job_id} already ended as {job.status}.")
    if job.status in ("validating", "queued", "paused"):
        job.status, job.finished_at = "cancelled", utcnow()
        message = "cancelled before it started" if job.started_at is None else "cancelled"
    elif job.status in ("running", "pausing"):
        job.status = "cancelling"
        message = "cancel requested; the worker stops after the current step"
    else:
        return job
    repository.add(session, JobEvent(job_id=job.id, level="info", message=message))
    job_status_changed(session, job.id)
    return job


def pause(*, session: Session, project_id: str, job_id: str) -> Job:
    """A queued job is ``paused`` at once (the worker drops its message); a running one goes to
    ``pausing`` and its worker checkpoints, records an event, sets ``paused`` and leaves.
    Pausing a job already pausing or paused is a no-op; any other state is a 409."""
    job = get_or_raise(session=session, project_id=project_id, job_id=job_id, for_update=True)
    if job.status in ("pausing", "paused"):
        return job
    if job.kind != "distill" and job.status == "running":
        raise JobNotPausable(
            f"Job {job_id} is a running {job.kind} job, which has no checkpoints to resume from;"
            " cancel it, or pause it while it is still queued."
        )
    if job.status in ("validating", "queued"):
        job.status = "paused"
        message = "paused while queued; resume re-queues it"
    elif job.status == "running":
        job.status = "pausing"
        message = "pause requested; the worker checkpoints and stops after the current step"
    else:
        raise JobNotPausable(
            f"Job {job_id} is {job.status}; only queued or running jobs can be paused."
        )
    repository.add(session, JobEvent(job_id=job.id, level="info", message=message))
    job_status_changed(session, job.id)
    return job


def resume(*, session: Session, enqueues: PendingEnqueues, project_id: str, job_id: str) -> Job:
    """A paused job goes back to ``queued`` (enqueued after the commit) and continues from its
    last checkpoint. Any other state is a 409."""
    job = get_or_raise(session=session, project_id=project_id, job_id=job_id, for_update=True)
    if job.status != "paused":
        hint = "; wait until it is paused" if job.status == "pausing" else ""
        raise JobNotResumable(f"Job {job_id} is {job.status}, not paused{hint}.")
    job.status, job.enqueued_at = "queued", utcnow()
    repository.add(session, JobEvent(job_id=job.id, level="info", message="resumed; queued again"))
    job_status_changed(session, job.id)
    enqueues.add(job.id, job.queue)
    return job


def queue_position(*, session: Session, job: Job) -> int | None:
    """1-based place among the queued jobs of the job's queue; None unless it is queued."""
    if job.status != "queued" or job.enqueued_at is None:
        return None
    return repository.queue_position(session, job=job)


def list_events(
    *, session: Session, project_id: str, job_id: str, after_id: int | None, limit: int
) -> builtins.list[JobEvent]:
    get_or_raise(session=session, project_id=project_id, job_id=job_id)
    return repository.list_events(session, job_id=job_id, after_id=after_id, limit=limit)


def list_metrics(
    *,
    session: Session,
    project_id: str,
    job_id: str,
    key: str | None,
    step_min: int | None,
    step_max: int | None,
    limit: int,
) -> builtins.list[Metric]:
    get_or_raise(session=session, project_id=project_id, job_id=job_id)
    return repository.list_metrics(
        session, job_id=job_id, key=key, step_min=step_min, step_max=step_max, limit=limit
    )


def list_checkpoints(
    *, session: Session, project_id: str, job_id: str
) -> builtins.list[Checkpoint]:
    get_or_raise(session=session, project_id=project_id, job_id=job_id)
    return repository.list_checkpoints(session, job_id=job_id)
