"""Queries on webhook endpoints and their deliveries. Every query names the project."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


def add(session: Session, row: WebhookEndpoint) -> None:
    session.add(row)
    session.flush()


def get(session: Session, *, project_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    stmt = select(WebhookEndpoint).where(
        WebhookEndpoint.project_id == project_id, WebhookEndpoint.id == endpoint_id
    )
    return session.scalar(stmt)


def list_endpoints(session: Session, *, project_id: str) -> list[WebhookEndpoint]:
    stmt = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.project_id == project_id)
        .order_by(WebhookEndpoint.id)
    )
    return list(session.scalars(stmt))


def delete(session: Session, row: WebhookEndpoint) -> None:
    session.delete(row)
    session.flush()


def list_deliveries(
    session: Session, *, project_id: str, endpoint_id: str, cursor: int | None, limit: int
) -> list[WebhookDelivery]:
    """Newest first; ``limit + 1`` rows so the caller can tell whether a next page exists."""
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.project_id == project_id, WebhookDelivery.endpoint_id == endpoint_id
    )
    if cursor is not None:
        stmt = stmt.where(WebhookDelivery.id < cursor)
    return list(session.scalars(stmt.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))


def attempts_of(session: Session, delivery_ids: list[int]) -> dict[int, list[WebhookAttempt]]:
    out: dict[int, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if not delivery_ids:
        return out
    stmt = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.id)
    )
    for row in session.scalars(stmt):
        out[row.delivery_id].append(row)
    return out
