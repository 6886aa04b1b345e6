from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import CallerDep, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound, Unauthorized, problem_responses
from api.idempotency.deps import IdempotencyDep
from api.webhooks import service
from api.webhooks.schemas import (
    DeliveryPage,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookPage,
)

router = APIRouter(tags=["webhooks"], responses=problem_responses(Unauthorized))


@router.post(
    "/webhooks",
    response_model=WebhookCreated,
    status_code=201,
    responses=problem_responses(InvalidInput),
)
def create_webhook(
    body: WebhookCreate,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
) -> Response:
    """Job state changes are POSTed to ``url``, signed as Standard Webhooks specify, with
    the ``secret`` returned here (and only here)."""
    row = service.create(
        session=session, settings=settings, project_id=caller.project_id, body=body
    )
    out = WebhookCreated(**WebhookOut.model_validate(row).model_dump(), secret=row.secret)
    return idempotency.respond(out, status_code=201)


@router.get("/webhooks", response_model=WebhookPage)
def list_webhooks(caller: CallerDep, session: SessionDep) -> WebhookPage:
    rows = service.list(session=session, project_id=caller.project_id)
    return WebhookPage(items=[WebhookOut.model_validate(r) for r in rows])


@router.get(
    "/webhooks/{endpoint_id}", response_model=WebhookOut, responses=problem_responses(NotFound)
)
def get_webhook(endpoint_id: str, caller: CallerDep, session: SessionDep) -> WebhookOut:
    row = service.get_or_raise(
        session=session, project_id=caller.project_id, endpoint_id=endpoint_id
    )
    return WebhookOut.model_validate(row)


@router.delete("/webhooks/{endpoint_id}", status_code=204, responses=problem_responses(NotFound))
def delete_webhook(endpoint_id: str, caller: CallerDep, session: SessionDep) -> Response:
    service.delete(session=session, project_id=caller.project_id, endpoint_id=endpoint_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses=problem_responses(NotFound),
)
def list_webhook_deliveries(
    endpoint_id: str,
    caller: CallerDep,
    session: SessionDep,
    cursor: int | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryPage:
    """Newest first: each delivery with its attempts (status code, error, duration)."""
    items, next_cursor = service.list_deliveries(
        session=session,
        project_id=caller.project_id,
        endpoint_id=endpoint_id,
        cursor=cursor,
        limit=limit,
    )
    return DeliveryPage(items=items, next_cursor=next_cursor)
