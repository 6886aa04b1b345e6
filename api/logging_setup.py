"""Structured logs for the API and the workers.

``DISTILL_LOG_FORMAT=json`` turns every log record into one JSON object per line (``ts``,
``level``, ``logger``, ``message``, and ``job_id`` / ``project_id`` while a job is being worked
on), so a log pipeline can filter one job's lines without parsing free text. ``text`` (the
default) leaves logging exactly as uvicorn and Celery set it up.

The job comes from context variables: the worker binds them while it runs a job
(``workers/tasks/distill.py``, ``workers/distill_run.py``), the API for requests under
``/v1/jobs/{job_id}`` (:class:`JobPathLogContext`). Context variables, not thread-locals, because
the API's sync routes run on worker threads that copy the request's context.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

P = ParamSpec("P")
R = TypeVar("R")

job_id_var: ContextVar[str | None] = ContextVar("distill_job_id", default=None)
project_id_var: ContextVar[str | None] = ContextVar("distill_project_id", default=None)

# The attributes every LogRecord has: anything else on a record came from ``extra=``
# (uvicorn's ``color_message`` is the message again, with terminal colour codes).
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message", "asctime", "color_message"
}  # fmt: skip


@contextmanager
def job_log_context(*, job_id: str, project_id: str | None = None) -> Iterator[None]:
    """Every record logged inside carries ``job_id`` (and ``project_id`` once known); both are
    restored on exit, so a worker's next job never inherits them."""
    job_token = job_id_var.set(job_id)
    project_token = project_id_var.set(project_id)
    try:
        yield
    finally:
        project_id_var.reset(project_token)
        job_id_var.reset(job_token)


def in_job_log_context(func: Callable[P, R]) -> Callable[P, R]:
    """Runs ``func`` inside :func:`job_log_context` for its ``job_id`` argument (by keyword or
    position), so a function that works on one job needs one line to log with its id."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        job_id = signature.bind(*args, **kwargs).arguments["job_id"]
        with job_log_context(job_id=str(job_id)):
            return func(*args, **kwargs)

    return wrapper


def bind_project(project_id: str) -> None:
    """Add the project once the job row is read; the enclosing :func:`job_log_context` undoes it."""
    project_id_var.set(project_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per record. ``ts`` is UTC ISO 8601 with milliseconds; an exception's
    traceback goes in ``exc_info``; fields passed with ``extra=`` are kept when JSON can hold
    them (else their ``repr``)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id, project_id = job_id_var.get(), project_id_var.get()
        if job_id is not None:
            out["job_id"] = job_id
        if project_id is not None:
            out["project_id"] = project_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=repr, ensure_ascii=False)


def use_json(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter (Celery's ``after_setup_logger``)."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


class _RootJsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`configure_api_logging` adds, so a second call replaces it."""


def configure_api_logging(log_format: str) -> None:
    """JSON: the root logger writes JSON to stderr at INFO, and uvicorn's own handlers (error
    and access logs) switch to the same formatter. Text: nothing changes. Safe to call again
    (``create_app`` runs once per test client)."""
    if log_format != "json":
        return
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _RootJsonHandler)]
    handler = _RootJsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        use_json(logging.getLogger(name))


_JOB_PATH = re.compile(r"^/v1/jobs/(job_[A-Za-z0-9]+)")


class JobPathLogContext:
    """ASGI middleware: a request under ``/v1/jobs/{job_id}`` logs with that ``job_id``, the
    access log line included (uvicorn writes it from inside the app's ``send``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        token = job_id_var.set(match.group(1))
        try:
            await self.app(scope, receive, send)
        finally:
            job_id_var.reset(token)
