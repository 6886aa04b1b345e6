from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import CallerDep, SessionDep, SettingsDep
from api.errors import NotFound, Unauthorized, problem_responses
from api.idempotency.deps import IdempotencyDep
from api.projects import service
from api.projects.schemas import ApiKeyCreate, ApiKeyIssued, ApiKeyOut, ProjectOut

router = APIRouter(tags=["projects"], responses=problem_responses(Unauthorized))


@router.get("/projects/me", response_model=ProjectOut)
def get_my_project(caller: CallerDep, session: SessionDep, settings: SettingsDep) -> ProjectOut:
    project = service.get_or_raise(session=session, project_id=caller.project_id)
    limits = service.scheduling(session=session, settings=settings, project=project)
    return ProjectOut(id=project.id, name=project.name, created_at=project.created_at,
                      max_running_jobs=project.max_running_jobs, **limits)  # fmt: skip


@router.get("/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(caller: CallerDep, session: SessionDep) -> list[ApiKeyOut]:
    rows = service.list_keys(session=session, project_id=caller.project_id)
    return [ApiKeyOut.model_validate(r) for r in rows]


@router.post("/api-keys", response_model=ApiKeyIssued, status_code=201)
def create_api_key(
    body: ApiKeyCreate, caller: CallerDep, session: SessionDep, idempotency: IdempotencyDep
) -> Response:
    issued = service.create_key(session=session, project_id=caller.project_id, name=body.name)
    out = ApiKeyIssued(**ApiKeyOut.model_validate(issued.row).model_dump(), key=issued.secret)
    return idempotency.respond(out, status_code=201)


@router.delete(
    "/api-keys/{key_id}", response_model=ApiKeyOut, responses=problem_responses(NotFound)
)
def revoke_api_key(key_id: str, caller: CallerDep, session: SessionDep) -> ApiKeyOut:
    row = service.revoke_key(session=session, project_id=caller.project_id, key_id=key_id)
    return ApiKeyOut.model_validate(row)
