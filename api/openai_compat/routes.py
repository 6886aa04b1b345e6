"""``/v1/files`` and ``/v1/fine_tuning/jobs`` in the shapes of the OpenAI fine-tuning API, so a
pipeline written for the ``openai`` package switches here by changing its base URL. Errors on
these routes are ``{"error": {...}}`` (see ``api/openai_compat/errors.py``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse

from api.deps import CallerDep, EnqueuesDep, SessionDep, SettingsDep
from api.errors import InvalidInput, problem_responses
from api.idempotency.deps import IdempotencyDep
from api.openai_compat import service
from api.openai_compat.errors import OpenAIErrorRoute, openai_error_responses
from api.openai_compat.mapping import unix
from api.openai_compat.schemas import (
    CreateFineTuningJob,
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
)
from models import Dataset

router = APIRouter(
    tags=["openai-compatible"],
    route_class=OpenAIErrorRoute,
    # 422: only the NUL guard in front of every route (api/nul_guard.py) answers it here.
    responses={**openai_error_responses(401), **problem_responses(InvalidInput)},
)

Limit = Annotated[int, Query(ge=1, le=10000)]


def _file(row: Dataset) -> FileObject:
    return FileObject(
        id=row.id, bytes=row.bytes, created_at=unix(row.created_at) or 0, filename=row.name
    )


@router.post("/files", response_model=FileObject, responses=openai_error_responses(400, 409, 413))
def create_file(
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL: chat messages or prompt/response")],
    purpose: Annotated[str, Form(description="must be 'fine-tune'")],
    idempotency: IdempotencyDep,
) -> Response:
    row = service.create_file(
        session=session,
        settings=settings,
        project_id=caller.project_id,
        filename=file.filename,
        purpose=purpose,
        source=file.file,
    )
    return idempotency.respond(_file(row))


@router.get("/files", response_model=FileList, responses=openai_error_responses(400))
def list_files(
    caller: CallerDep,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 10000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> FileList:
    rows, has_more = service.list_files(
        session=session,
        project_id=caller.project_id,
        after=after,
        limit=limit,
        order=order,
        purpose=purpose,
    )
    data = [_file(r) for r in rows]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/files/{file_id}", response_model=FileObject, responses=openai_error_responses(404))
def get_file(file_id: str, caller: CallerDep, session: SessionDep) -> FileObject:
    return _file(
        service.get_file_or_raise(session=session, project_id=caller.project_id, file_id=file_id)
    )


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={
        200: {"description": "the file's bytes", "content": {"application/octet-stream": {}}},
        **openai_error_responses(404),
    },
)
def get_file_content(
    file_id: str, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    path = service.file_path(
        session=session, settings=settings, project_id=caller.project_id, file_id=file_id
    )
    return FileResponse(path, media_type="application/octet-stream")


@router.delete(
    "/files/{file_id}", response_model=FileDeleted, responses=openai_error_responses(404, 409)
)
def delete_file(file_id: str, caller: CallerDep, session: SessionDep) -> FileDeleted:
    deleted = service.delete_file(session=session, project_id=caller.project_id, file_id=file_id)
    return FileDeleted(id=deleted, deleted=True)


@router.post(
    "/fine_tuning/jobs", response_model=FineTuningJob, responses=openai_error_responses(400, 409)
)
def create_fine_tuning_job(
    body: CreateFineTuningJob,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    enqueues: EnqueuesDep,
    idempotency: IdempotencyDep,
) -> Response:
    job = service.create_job(
        session=session,
        settings=settings,
        enqueues=enqueues,
        project_id=caller.project_id,
        req=body,
    )
    return idempotency.respond(service.job_out(session=session, job=job))


@router.get(
    "/fine_tuning/jobs", response_model=FineTuningJobList, responses=openai_error_responses(400)
)
def list_fine_tuning_jobs(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> FineTuningJobList:
    """Filter on metadata with ``metadata[<key>]=<value>`` query parameters, as the SDK sends
    them."""
    metadata = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    rows, has_more = service.list_jobs(
        session=session, project_id=caller.project_id, after=after, limit=limit, metadata=metadata
    )
    return FineTuningJobList(
        data=[service.job_out(session=session, job=r) for r in rows], has_more=has_more
    )


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}",
    response_model=FineTuningJob,
    responses=openai_error_responses(404),
)
def get_fine_tuning_job(
    fine_tuning_job_id: str, caller: CallerDep, session: SessionDep
) -> FineTuningJob:
    job = service.get_job_or_raise(
        session=session, project_id=caller.project_id, job_id=fine_tuning_job_id
    )
    return service.job_out(session=session, job=job)


@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    response_model=FineTuningJob,
    responses=openai_error_responses(404, 409),
)
def cancel_fine_tuning_job(
    fine_tuning_job_id: str, caller: CallerDep, session: SessionDep
) -> FineTuningJob:
    job = service.cancel_job(
        session=session, project_id=caller.project_id, job_id=fine_tuning_job_id
    )
    return service.job_out(session=session, job=job)


@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/pause",
    response_model=FineTuningJob,
    responses=openai_error_responses(404, 409),
)
def pause_fine_tuning_job(
    fine_tuning_job_id: str, caller: CallerDep, session: SessionDep
) -> FineTuningJob:
    """Queued: paused at once. Running: still ``running`` until the worker has checkpointed."""
    job = service.pause_job(
        session=session, project_id=caller.project_id, job_id=fine_tuning_job_id
    )
    return service.job_out(session=session, job=job)


@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/resume",
    response_model=FineTuningJob,
    responses=openai_error_responses(404, 409),
)
def resume_fine_tuning_job(
    fine_tuning_job_id: str, caller: CallerDep, session: SessionDep, enqueues: EnqueuesDep
) -> FineTuningJob:
    """A paused job is queued again and continues from its last checkpoint."""
    job = service.resume_job(
        session=session, enqueues=enqueues, project_id=caller.project_id, job_id=fine_tuning_job_id
    )
    return service.job_out(session=session, job=job)


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/events",
    response_model=FineTuningJobEventList,
    responses=openai_error_responses(400, 404),
)
def list_fine_tuning_events(
    fine_tuning_job_id: str,
    caller: CallerDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> FineTuningJobEventList:
    events, has_more = service.list_events(
        session=session,
        project_id=caller.project_id,
        job_id=fine_tuning_job_id,
        after=after,
        limit=limit,
    )
    return FineTuningJobEventList(data=events, has_more=has_more)


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
    response_model=FineTuningJobCheckpointList,
    responses=openai_error_responses(400, 404),
)
def list_fine_tuning_checkpoints(
    fine_tuning_job_id: str,
    caller: CallerDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> FineTuningJobCheckpointList:
    data, has_more = service.list_checkpoints(
        session=session,
        project_id=caller.project_id,
        job_id=fine_tuning_job_id,
        after=after,
        limit=limit,
    )
    return FineTuningJobCheckpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )
