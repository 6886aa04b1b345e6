from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile

from api.datasets import service
from api.datasets.schemas import DatasetOut, DatasetPage
from api.deps import CallerDep, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound, PayloadTooLarge, Unauthorized, problem_responses
from api.idempotency.deps import IdempotencyDep
from api.storage import StorageUnavailable

router = APIRouter(tags=["datasets"], responses=problem_responses(Unauthorized))


@router.post(
    "/datasets",
    response_model=DatasetOut,
    status_code=201,
    responses=problem_responses(InvalidInput, PayloadTooLarge, StorageUnavailable),
)
def upload_dataset(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
    file: Annotated[UploadFile, File(description="JSONL: prompt/response or chat messages")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    row = service.create(
        session=session,
        settings=settings,
        project_id=caller.project_id,
        name=name or file.filename or "dataset",
        source=file.file,
    )
    return idempotency.respond(DatasetOut.model_validate(row), status_code=201)


@router.get("/datasets", response_model=DatasetPage)
def list_datasets(
    caller: CallerDep,
    session: SessionDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DatasetPage:
    rows, next_cursor = service.list(
        session=session, project_id=caller.project_id, cursor=cursor, limit=limit
    )
    return DatasetPage(items=[DatasetOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/datasets/{dataset_id}", response_model=DatasetOut, responses=problem_responses(NotFound)
)
def get_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> DatasetOut:
    row = service.get_or_raise(session=session, project_id=caller.project_id, dataset_id=dataset_id)
    return DatasetOut.model_validate(row)
