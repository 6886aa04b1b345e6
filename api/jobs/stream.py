"""``GET /v1/jobs/{id}/stream``: a job's status, events and metrics as Server-Sent Events.

Messages (WHATWG HTML, "Server-sent events"):

- ``event: status`` with the JobOut JSON: first, then whenever status or progress changes;
- ``event: event`` with an EventOut JSON and ``event: metric`` with a MetricOut JSON, each with
  ``id: <last_event_id>-<last_metric_id>``, the cursor of everything sent so far;
- ``event: end`` once the job is terminal and every event and metric before it was sent;
- a ``: keep-alive`` comment when nothing was sent for ``sse_heartbeat_seconds``.

A reconnect with ``Last-Event-ID: <e>-<m>`` (or ``?last_event_id=``) resumes after that cursor:
events with id > e and metrics with id > m. One job has one writer at a time (the lease), so its
rows' ids grow in commit order and nothing is skipped. Each poll opens a short session of its own
and closes it: the stream never holds a transaction open.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import InvalidInput
from api.jobs import repository
from api.jobs.schemas import EventOut, JobOut, MetricOut
from models import JobEvent, Metric
from models.session import session_scope

TERMINAL = ("succeeded", "failed", "cancelled")
EVENTS_PER_POLL = 500
METRICS_PER_POLL = 2000
RETRY_MS = 2000


@dataclass
class StreamCursor:
    event_id: int = 0
    metric_id: int = 0

    def __str__(self) -> str:
        return f"{self.event_id}-{self.metric_id}"


def parse_cursor(raw: str | None, *, loc: list[str | int]) -> StreamCursor:
    if raw is None or raw == "":
        return StreamCursor()
    event_part, sep, metric_part = raw.partition("-")
    if not sep or not event_part.isdigit() or not metric_part.isdigit():
        msg = "must be '<last event id>-<last metric id>', as sent in the stream's id: lines"
        raise InvalidInput(f"{'.'.join(map(str, loc))}: {msg}", errors=[{"loc": loc, "msg": msg}])
    return StreamCursor(int(event_part), int(metric_part))


def sse_message(event: str, data: str, message_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if message_id is not None:
        lines.append(f"id: {message_id}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


@dataclass
class Poll:
    job: JobOut | None
    events: list[tuple[int, EventOut]]
    metrics: list[tuple[int, MetricOut]]

    @property
    def full(self) -> bool:
        """A batch came back full: more rows are waiting, poll again at once."""
        return len(self.events) >= EVENTS_PER_POLL or len(self.metrics) >= METRICS_PER_POLL


def poll_once(url: str, project_id: str, job_id: str, cursor: StreamCursor) -> Poll:
    # The job first, its rows after: whatever committed before a terminal status is visible.
    with session_scope(url) as session:
        row = repository.get(session, project_id=project_id, job_id=job_id)
        if row is None:
            return Poll(job=None, events=[], metrics=[])
        job = JobOut.from_row(row)
        return Poll(
            job=job,
            events=_events(session, job_id, cursor),
            metrics=_metrics(session, job_id, cursor),
        )


def _events(session: Session, job_id: str, cursor: StreamCursor) -> list[tuple[int, EventOut]]:
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > cursor.event_id)
        .order_by(JobEvent.id)
        .limit(EVENTS_PER_POLL)
    )
    return [(r.id, EventOut.model_validate(r)) for r in session.scalars(stmt)]


def _metrics(session: Session, job_id: str, cursor: StreamCursor) -> list[tuple[int, MetricOut]]:
    stmt = (
        select(Metric)
        .where(Metric.job_id == job_id, Metric.id > cursor.metric_id)
        .order_by(Metric.id)
        .limit(METRICS_PER_POLL)
    )
    return [(r.id, MetricOut.model_validate(r)) for r in session.scalars(stmt)]


def _status_key(job: JobOut) -> tuple[Any, ...]:
    return (job.status, job.progress.step, job.progress.total_steps, job.error, job.output_model_id)


async def job_stream(
    *,
    url: str,
    project_id: str,
    job_id: str,
    cursor: StreamCursor,
    poll_seconds: float,
    heartbeat_seconds: float,
    is_disconnected: Callable[[], Any],
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[str]:
    """The message stream; ends after ``end`` or when the client goes away."""
    import anyio

    yield f"retry: {RETRY_MS}\n\n"
    last_status: tuple[Any, ...] | None = None
    last_sent = clock()
    while True:
        poll = await run_in_threadpool(poll_once, url, project_id, job_id, cursor)
        if poll.job is None:  # deleted under us: nothing more will come
            yield sse_message("end", json.dumps({"reason": "job no longer exists"}))
            return
        out: list[str] = []
        if _status_key(poll.job) != last_status:
            last_status = _status_key(poll.job)
            out.append(sse_message("status", poll.job.model_dump_json()))
        for event_id, event in poll.events:
            cursor.event_id = event_id
            out.append(sse_message("event", event.model_dump_json(), str(cursor)))
        for metric_id, metric in poll.metrics:
            cursor.metric_id = metric_id
            out.append(sse_message("metric", metric.model_dump_json(), str(cursor)))
        done = poll.job.status in TERMINAL and not poll.full
        if done:
            out.append(sse_message("end", json.dumps({"status": poll.job.status}), str(cursor)))
        if out:
            yield "".join(out)
            last_sent = clock()
        if done:
            return
        if poll.full:
            continue
        if clock() - last_sent >= heartbeat_seconds:
            yield ": keep-alive\n\n"
            last_sent = clock()
        if await is_disconnected():
            return
        await anyio.sleep(poll_seconds)
