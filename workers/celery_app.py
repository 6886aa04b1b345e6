"""The Celery app. Settings for long jobs: late acks, prefetch 1, reject on worker loss, a
visibility timeout above the longest job, no result backend (the database is the truth).
Run one worker process per GPU with ``--pool solo``: CUDA is never initialised in a fork parent."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from api.config import get_settings

# Resource classes (docs/OPERATIONS.md "Scheduling"); a worker listens to some with -Q.
QUEUES = ("cpu", "gpu", "gpu-multi")
DISTILL_TASK = "workers.tasks.distill.run_distill_job"


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("distill", broker=settings.resolved_broker_url, include=["workers.tasks.distill"])
    transport_options: dict[str, object] = {}
    # kombu's SQLAlchemy transport hands every option to create_engine(): Redis only.
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        timeout = settings.visibility_timeout_seconds
        transport_options["visibility_timeout"] = timeout
        # How often an idle worker looks for messages past the timeout: kombu's default scan
        # (every 10th call of a 10 s timer) is far slower than a short timeout.
        transport_options["unacked_restore_interval"] = min(10, max(1, timeout // 3))
        transport_options["unacked_restore_throttle"] = 1
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="cpu",
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A broker restart must not end a worker or its job: reconnect for ever, and keep the
        # running job going meanwhile (its lease lives in the database, not in the broker; a
        # redelivered copy of its message is dropped by the claim).
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


celery_app = make_celery()


def declare_broker_queues(app: Celery = celery_app, attempts: int = 8) -> None:
    """Create the broker's tables and queue rows once, before any process publishes or consumes.

    kombu's SQLAlchemy transport (the embedded default) creates them on first use with a
    check-then-insert guarded only by an in-process lock: two processes starting together (the
    API publishing its first job while the worker declares its queues) can both insert, and the
    loser fails (CI, 2026-12-05: "UNIQUE constraint failed: kombu_queue.name", and the job
    never ran).
    Each attempt uses a fresh connection, so a failed one leaves no broken session behind; the
    rows exist after any attempt that succeeded in any process. Redis needs none of this."""
    import random
    import time

    if not str(app.conf.broker_url or "").startswith("sqla+"):
        return
    for attempt in range(1, attempts + 1):
        try:
            with app.connection_for_write() as connection:
                channel = connection.default_channel
                for name in QUEUES:
                    channel.queue_declare(queue=name)
            return
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.05, 0.25) * attempt)


def _start_sweeper(**_kwargs: object) -> None:
    from workers.sweeper import Sweeper

    Sweeper(get_settings()).start()


# Before the consumer declares its queues: see declare_broker_queues.
from celery.signals import worker_init, worker_ready  # noqa: E402

worker_init.connect(lambda **_kwargs: declare_broker_queues(), weak=False)

# Every worker sweeps; the guarded UPDATEs make concurrent sweepers safe.
worker_ready.connect(_start_sweeper, weak=False)


def _start_webhook_deliverer(**_kwargs: object) -> None:
    from workers.webhook_delivery import WebhookDeliverer

    WebhookDeliverer(get_settings()).start()


# Every worker delivers the webhook outbox; rows are claimed one by one with a guarded UPDATE.
worker_ready.connect(_start_webhook_deliverer, weak=False)


def _start_heartbeat(sender: object = None, **_kwargs: object) -> None:
    from workers.heartbeat import start_worker_heartbeat
    from workers.tasks.distill import WORKER_ID  # the lease owner name: current_job_id follows

    consumed = celery_app.amqp.queues.consume_from or {}
    start_worker_heartbeat(get_settings(), WORKER_ID, sorted(consumed) or list(QUEUES))


def _stop_heartbeat(**_kwargs: object) -> None:
    from workers.heartbeat import stop_worker_heartbeat

    stop_worker_heartbeat()


# A worker_heartbeats row per process, for GET /metrics (live workers per queue).
from celery.signals import after_setup_logger, after_setup_task_logger, worker_shutdown  # noqa: E402

worker_ready.connect(_start_heartbeat, weak=False)
worker_shutdown.connect(_stop_heartbeat, weak=False)


def _json_logs(logger: object = None, **_kwargs: object) -> None:
    import logging

    from api.logging_setup import use_json

    if get_settings().log_format == "json" and isinstance(logger, logging.Logger):
        use_json(logger)


# DISTILL_LOG_FORMAT=json: Celery's handlers (root and task loggers) write JSON lines.
after_setup_logger.connect(_json_logs, weak=False)
after_setup_task_logger.connect(_json_logs, weak=False)
