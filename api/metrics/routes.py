"""``GET /metrics`` in the Prometheus text format (OpenMetrics when the scraper asks for it).

An operator endpoint, outside ``/v1`` and the OpenAPI document: it answers for every project at
once, so it is guarded by its own bearer token (``DISTILL_METRICS_TOKEN``) rather than a
project key; with no token set it is open, as most scrape targets are on a private network.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from api.config import Settings
from api.deps import SessionDep, SettingsDep
from api.errors import Unauthorized
from api.jobs.spec import JOB_KINDS
from api.metrics.collector import ServiceCollector
from api.webhooks.outbox import JOB_STATUSES

router = APIRouter()


def _check_token(request: Request, settings: Settings) -> None:
    expected = settings.metrics_token
    if not expected:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise Unauthorized("Send 'Authorization: Bearer <DISTILL_METRICS_TOKEN>'.")


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Every value is read from the database now (``ServiceCollector``); nothing is cached."""
    _check_token(request, settings)
    from workers.celery_app import QUEUES  # as workers.dispatch: the Celery app only when used

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        ServiceCollector(
            session,
            queues=QUEUES,
            statuses=JOB_STATUSES,
            kinds=JOB_KINDS,
            heartbeat_seconds=settings.heartbeat_seconds,
        )
    )
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), media_type=content_type)
