from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse

from api.deps import CallerDep, SessionDep, SettingsDep
from api.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    field_error,
    problem_responses,
)
from api.idempotency.deps import IdempotencyDep
from api.registry import service
from api.registry.archives import pack_directory
from api.registry.schemas import ModelOut, ModelPage, ModelRegister
from api.storage import StorageUnavailable, open_store

router = APIRouter(tags=["models"], responses=problem_responses(Unauthorized))


@router.post(
    "/models", response_model=ModelOut, status_code=201, responses=problem_responses(InvalidInput)
)
def register_model(
    body: ModelRegister,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
) -> Response:
    if body.trust_remote_code and not settings.allow_trust_remote_code:
        raise field_error(
            ["body", "trust_remote_code"], "is refused: this service never runs a model's own code"
        )
    row = service.register_local(
        session=session,
        settings=settings,
        project_id=caller.project_id,
        name=body.name,
        path=body.path,
    )
    return idempotency.respond(ModelOut.model_validate(row), status_code=201)


@router.post(
    "/models/upload",
    response_model=ModelOut,
    status_code=201,
    responses=problem_responses(InvalidInput, PayloadTooLarge, StorageUnavailable),
)
def upload_model(
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
    file: Annotated[UploadFile, File(description="A .tar.gz of a Hugging Face model directory")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    row = service.register_upload(
        session=session,
        settings=settings,
        project_id=caller.project_id,
        name=name,
        source=file.file,
    )
    return idempotency.respond(ModelOut.model_validate(row), status_code=201)


@router.get("/models", response_model=ModelPage)
def list_models(
    caller: CallerDep,
    session: SessionDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ModelPage:
    rows, next_cursor = service.list(
        session=session, project_id=caller.project_id, cursor=cursor, limit=limit
    )
    return ModelPage(items=[ModelOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/models/{model_id}", response_model=ModelOut, responses=problem_responses(NotFound))
def get_model(model_id: str, caller: CallerDep, session: SessionDep) -> ModelOut:
    row = service.get_or_raise(session=session, project_id=caller.project_id, model_id=model_id)
    return ModelOut.model_validate(row)


@router.get(
    "/models/{model_id}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/gzip": {}}},
        **problem_responses(NotFound, StorageUnavailable),
    },
)
def download_model(
    model_id: str,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
) -> FileResponse:
    row = service.get_or_raise(session=session, project_id=caller.project_id, model_id=model_id)
    # A job's output written on a worker host is fetched from the shared store, if one is set.
    archive = pack_directory(open_store(settings).fetch_recorded(row.path))
    background.add_task(archive.unlink, missing_ok=True)
    return FileResponse(
        archive, media_type="application/gzip", filename=f"{row.name or row.id}.tar.gz"
    )
