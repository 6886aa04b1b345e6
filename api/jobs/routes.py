from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, EnqueuesDep, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound, Unauthorized, problem_responses
from api.idempotency.deps import IdempotencyDep
from api.jobs import service
from api.jobs.body import SPEC_REQUEST_BODY, SpecBody
from api.jobs.dry_run import dry_run
from api.jobs.schemas import (
    CheckpointOut,
    CheckpointPage,
    DryRunReport,
    EventOut,
    EventPage,
    JobOut,
    JobPage,
    MetricOut,
    MetricPage,
)
from api.jobs.stream import job_stream, parse_cursor

router = APIRouter(tags=["jobs"], responses=problem_responses(Unauthorized))


@router.post(
    "/jobs",
    response_model=JobOut,
    status_code=201,
    responses={
        200: {"model": DryRunReport, "description": "dry_run: true: the report; nothing made"},
        **problem_responses(InvalidInput),
    },
    openapi_extra=SPEC_REQUEST_BODY,
)
def create_job(
    body: SpecBody,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    enqueues: EnqueuesDep,
    idempotency: IdempotencyDep,
) -> Response:
    """The body is JSON or YAML (``Content-Type: application/yaml``). With ``dry_run: true``
    nothing is created: the answer is the validate report, status 200."""
    if service.is_dry_run(body):
        report = dry_run(
            session=session, settings=settings, project_id=caller.project_id, body=body
        )
        return idempotency.respond(DryRunReport.model_validate(report), status_code=200)
    job = service.create(
        session=session,
        settings=settings,
        enqueues=enqueues,
        project_id=caller.project_id,
        body=body,
    )
    return idempotency.respond(JobOut.from_row(job), status_code=201)


@router.post(
    "/jobs/validate",
    response_model=DryRunReport,
    responses=problem_responses(InvalidInput),
    openapi_extra=SPEC_REQUEST_BODY,
)
def validate_job(
    body: SpecBody, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> DryRunReport:
    """Resolve a spec (JSON or YAML) and report what would run, with every problem found.
    Writes nothing, queues nothing."""
    report = dry_run(session=session, settings=settings, project_id=caller.project_id, body=body)
    return DryRunReport.model_validate(report)


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    status: str | None = None,
    kind: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Filter on metadata with ``metadata.<key>=<value>`` query parameters."""
    metadata = {
        k.removeprefix("metadata."): v
        for k, v in request.query_params.items()
        if k.startswith("metadata.")
    }
    rows, next_cursor = service.list(
        session=session,
        project_id=caller.project_id,
        cursor=cursor,
        limit=limit,
        status=status,
        kind=kind,
        metadata=metadata,
    )
    items = [JobOut.from_row(r, service.queue_position(session=session, job=r)) for r in rows]
    return JobPage(items=items, next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=problem_responses(NotFound))
def get_job(job_id: str, caller: CallerDep, session: SessionDep) -> JobOut:
    job = service.get_or_raise(session=session, project_id=caller.project_id, job_id=job_id)
    return JobOut.from_row(job, service.queue_position(session=session, job=job))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses=problem_responses(NotFound, service.JobNotCancellable),
)
def cancel_job(job_id: str, caller: CallerDep, session: SessionDep) -> JobOut:
    return JobOut.from_row(
        service.cancel(session=session, project_id=caller.project_id, job_id=job_id)
    )


@router.post(
    "/jobs/{job_id}/pause",
    response_model=JobOut,
    responses=problem_responses(NotFound, service.JobNotPausable),
)
def pause_job(job_id: str, caller: CallerDep, session: SessionDep) -> JobOut:
    """Queued: paused at once. Running: ``pausing`` until the worker has checkpointed."""
    return JobOut.from_row(
        service.pause(session=session, project_id=caller.project_id, job_id=job_id)
    )


@router.post(
    "/jobs/{job_id}/resume",
    response_model=JobOut,
    responses=problem_responses(NotFound, service.JobNotResumable),
)
def resume_job(
    job_id: str, caller: CallerDep, session: SessionDep, enqueues: EnqueuesDep
) -> JobOut:
    """A paused job is queued again and continues from its last checkpoint."""
    job = service.resume(
        session=session, enqueues=enqueues, project_id=caller.project_id, job_id=job_id
    )
    return JobOut.from_row(job, service.queue_position(session=session, job=job))


@router.get(
    "/jobs/{job_id}/events", response_model=EventPage, responses=problem_responses(NotFound)
)
def list_job_events(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    after_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> EventPage:
    rows = service.list_events(
        session=session, project_id=caller.project_id, job_id=job_id, after_id=after_id, limit=limit
    )
    return EventPage(items=[EventOut.model_validate(r) for r in rows])


@router.get(
    "/jobs/{job_id}/metrics", response_model=MetricPage, responses=problem_responses(NotFound)
)
def list_job_metrics(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    key: str | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    limit: Annotated[int, Query(ge=1, le=100000)] = 10000,
) -> MetricPage:
    rows = service.list_metrics(
        session=session,
        project_id=caller.project_id,
        job_id=job_id,
        key=key,
        step_min=step_min,
        step_max=step_max,
        limit=limit,
    )
    return MetricPage(items=[MetricOut.model_validate(r) for r in rows])


@router.get(
    "/jobs/{job_id}/checkpoints",
    response_model=CheckpointPage,
    responses=problem_responses(NotFound),
)
def list_job_checkpoints(job_id: str, caller: CallerDep, session: SessionDep) -> CheckpointPage:
    rows = service.list_checkpoints(session=session, project_id=caller.project_id, job_id=job_id)
    return CheckpointPage(items=[CheckpointOut.model_validate(r) for r in rows])


@router.get(
    "/jobs/{job_id}/stream",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}},
        **problem_responses(NotFound, InvalidInput),
    },
)
def stream_job(
    job_id: str,
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: str | None = None,
) -> StreamingResponse:
    """Status, events and metrics as Server-Sent Events until the job ends (api/jobs/stream.py).
    Resume with ``Last-Event-ID`` (or ``?last_event_id=``) set to the last ``id:`` received."""
    service.get_or_raise(session=session, project_id=caller.project_id, job_id=job_id)
    if last_event_id_header is not None:
        cursor = parse_cursor(last_event_id_header, loc=["header", "Last-Event-ID"])
    else:
        cursor = parse_cursor(last_event_id, loc=["query", "last_event_id"])
    messages = job_stream(
        url=settings.resolved_database_url,
        project_id=caller.project_id,
        job_id=job_id,
        cursor=cursor,
        poll_seconds=settings.sse_poll_seconds,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        is_disconnected=request.is_disconnected,
    )
    return StreamingResponse(
        messages,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
