"""Webhook endpoint rules: create (target checked against the allow-list, secret made once),
list, get, delete, and the delivery log. Never commits."""

from __future__ import annotations

import builtins

from sqlalchemy.orm import Session

from api.config import Settings
from api.errors import NotFound, field_error
from api.webhooks import repository
from api.webhooks.outbox import ALL_JOB_EVENTS, JOB_EVENT_TYPES
from api.webhooks.schemas import AttemptOut, DeliveryOut, WebhookCreate
from api.webhooks.signing import new_secret
from api.webhooks.targets import AllowList, TargetRefused, resolve_target
from models import WebhookEndpoint, new_id


def create(
    *, session: Session, settings: Settings, project_id: str, body: WebhookCreate
) -> WebhookEndpoint:
    try:
        resolve_target(body.url, AllowList.from_settings(settings))
    except TargetRefused as exc:
        raise field_error(["body", "url"], str(exc)) from exc
    for i, event_type in enumerate(body.event_types):
        if event_type != ALL_JOB_EVENTS and event_type not in JOB_EVENT_TYPES:
            known = ", ".join((ALL_JOB_EVENTS, *JOB_EVENT_TYPES))
            raise field_error(["body", "event_types", i], f"unknown event type; one of {known}")
    row = WebhookEndpoint(
        id=new_id("whk"),
        project_id=project_id,
        url=body.url,
        event_types=[*dict.fromkeys(body.event_types)],
        description=body.description,
        secret=new_secret(),
    )
    repository.add(session, row)
    return row


def get_or_raise(*, session: Session, project_id: str, endpoint_id: str) -> WebhookEndpoint:
    row = repository.get(session, project_id=project_id, endpoint_id=endpoint_id)
    if row is None:
        raise NotFound(f"Webhook endpoint {endpoint_id} does not exist.")
    return row


def list(*, session: Session, project_id: str) -> builtins.list[WebhookEndpoint]:  # noqa: A001
    return repository.list_endpoints(session, project_id=project_id)


def delete(*, session: Session, project_id: str, endpoint_id: str) -> None:
    """Deleting an endpoint drops its pending deliveries and its log with it."""
    row = get_or_raise(session=session, project_id=project_id, endpoint_id=endpoint_id)
    repository.delete(session, row)


def list_deliveries(
    *, session: Session, project_id: str, endpoint_id: str, cursor: int | None, limit: int
) -> tuple[builtins.list[DeliveryOut], int | None]:
    get_or_raise(session=session, project_id=project_id, endpoint_id=endpoint_id)
    rows = repository.list_deliveries(
        session, project_id=project_id, endpoint_id=endpoint_id, cursor=cursor, limit=limit
    )
    page = rows[:limit]
    logs = repository.attempts_of(session, [r.id for r in page])
    items = [
        DeliveryOut(
            id=r.id,
            message_id=r.message_id,
            event_type=r.event_type,
            status=r.status,
            attempts=r.attempts,
            next_attempt_at=r.next_attempt_at if r.status == "pending" else None,
            created_at=r.created_at,
            finished_at=r.finished_at,
            payload=r.payload,
            log=[AttemptOut.model_validate(a) for a in logs[r.id]],
        )
        for r in page
    ]
    return items, (page[-1].id if len(rows) > limit else None)
