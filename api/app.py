"""The FastAPI application: every route under /v1, every error as problem+json."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import APIRouter, FastAPI

from api.body_limit import BodySizeLimit
from api.concurrency import ConcurrencyLimit
from api.config import get_settings
from api.dashboard.routes import router as dashboard_router
from api.datasets.routes import router as datasets_router
from api.errors import install_error_handlers
from api.idempotency.deps import install_replay_handler
from api.jobs.routes import router as jobs_router
from api.logging_setup import JobPathLogContext, configure_api_logging
from api.metrics.routes import router as metrics_router
from api.nul_guard import RejectNulCharacters
from api.openai_compat.errors import install_openai_error_handler
from api.openai_compat.routes import router as openai_router
from api.projects.routes import router as projects_router
from api.registry.generate import router as generate_router
from api.registry.routes import router as models_router
from api.webhooks.routes import router as webhooks_router
from models.session import API_THREADS


@asynccontextmanager
async def _thread_pool_within_db_pool(_app: FastAPI) -> AsyncIterator[None]:
    # Fewer threads than pooled connections: see models.session.API_THREADS.
    anyio.to_thread.current_default_thread_limiter().total_tokens = API_THREADS
    await anyio.to_thread.run_sync(_declare_broker_queues)
    yield


def _declare_broker_queues() -> None:
    """The SQL broker's queue rows, before the first publish (workers.celery_app explains the
    race). A failure is logged, not fatal: a job whose send fails stays queued for the sweeper."""
    from workers.celery_app import declare_broker_queues

    try:
        declare_broker_queues()
    except Exception:
        logging.getLogger(__name__).exception("could not declare the broker's queues")


def create_app() -> FastAPI:
    settings = get_settings()
    configure_api_logging(settings.log_format)
    app = FastAPI(
        title="Distillation service",
        version="0.1.0",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        lifespan=_thread_pool_within_db_pool,
    )
    install_error_handlers(app)
    install_openai_error_handler(app)  # {"error": …} on /v1/files, /v1/fine_tuning
    install_replay_handler(app)
    v1 = APIRouter(prefix="/v1")

    @v1.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for router in (projects_router, datasets_router, models_router, generate_router,
                   jobs_router):  # fmt: skip
        v1.include_router(router)
    v1.include_router(webhooks_router)  # /v1/webhooks
    v1.include_router(openai_router)  # /v1/files, /v1/fine_tuning/jobs in OpenAI's shapes
    app.include_router(v1)
    app.include_router(dashboard_router)  # the web dashboard at /ui/
    app.include_router(metrics_router)  # GET /metrics for Prometheus; not in the OpenAPI document
    app.add_middleware(
        BodySizeLimit,
        upload_limit=settings.max_upload_bytes,
        other_limit=settings.max_spec_bytes,
    )
    app.add_middleware(ConcurrencyLimit)  # no thread/connection deadlock under load
    app.add_middleware(RejectNulCharacters)  # PostgreSQL text cannot hold NUL: a 422, not a 500
    app.add_middleware(JobPathLogContext)  # log lines of /v1/jobs/{id} requests carry job_id
    return app


app = create_app()
