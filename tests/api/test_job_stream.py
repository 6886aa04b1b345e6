"""GET /v1/jobs/{id}/stream: Server-Sent Events of status, events and metrics, resumable from
any cursor with nothing repeated or skipped, on SQLite and PostgreSQL. Rows are written the way
the worker writes them (committed units of work) while the stream polls."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from sqlalchemy import update

from models import Job, JobEvent, Metric, new_id, utcnow
from models.session import session_scope


def parse_sse(text: str) -> list[dict[str, Any]]:
    """An independent reading of the SSE wire format: blocks split by a blank line; a block
    of comment lines only is a heartbeat."""
    messages = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, Any] = {"data": []}
        for line in block.split("\n"):
            if line.startswith(":"):
                fields.setdefault("comments", []).append(line)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                fields["data"].append(value)
            else:
                fields[name] = value
        fields["data"] = "\n".join(fields["data"])
        messages.append(fields)
    return messages


def _job(api, project_id: str, status: str = "running") -> str:
    job_id = new_id("job")
    with session_scope(api.database_url) as session:
        session.add(
            Job(id=job_id, project_id=project_id, kind="distill", status=status, spec={},
                queue="cpu", total_steps=10)
        )  # fmt: skip
    return job_id


def _write(api, job_id: str, *, events: int = 0, metrics: int = 0, first_step: int = 1) -> None:
    with session_scope(api.database_url) as session:
        for i in range(events):
            session.add(JobEvent(job_id=job_id, level="info", message=f"event {first_step + i}"))
        session.flush()
        for i in range(metrics):
            session.add(Metric(job_id=job_id, key="train/loss", step=first_step + i,
                               value=1.0 / (first_step + i)))  # fmt: skip


def _set(api, job_id: str, **values: Any) -> None:
    with session_scope(api.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow(), **values))


def _stream(api, headers, job_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    response = api.client.get(f"/v1/jobs/{job_id}/stream", headers=headers, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [m for m in parse_sse(response.text) if "event" in m]


@pytest.fixture
def project(api):
    return api.new_project("stream")


def _auth(project) -> dict[str, str]:
    return {"Authorization": project["Authorization"]}


def test_finished_job_streams_status_rows_and_end(api, project):
    job_id = _job(api, project["project_id"])
    _write(api, job_id, events=3, metrics=4)
    _set(api, job_id, status="succeeded", progress_step=4)
    messages = _stream(api, _auth(project), job_id)
    kinds = [m["event"] for m in messages]
    assert kinds == ["status"] + ["event"] * 3 + ["metric"] * 4 + ["end"]
    status = json.loads(messages[0]["data"])
    assert status["id"] == job_id and status["status"] == "succeeded"
    assert status["progress"] == {"step": 4, "total_steps": 10}
    events = api.client.get(f"/v1/jobs/{job_id}/events", headers=_auth(project)).json()["items"]
    assert [json.loads(m["data"]) for m in messages[1:4]] == events
    metrics = api.client.get(f"/v1/jobs/{job_id}/metrics", headers=_auth(project)).json()["items"]
    assert [json.loads(m["data"]) for m in messages[4:8]] == metrics
    # Each id is the cursor of everything sent up to that message.
    last_event = events[-1]["id"]
    assert [m["id"] for m in messages[1:4]] == [f"{e['id']}-0" for e in events]
    assert all(m["id"].startswith(f"{last_event}-") for m in messages[4:8])
    assert messages[-1]["id"] == messages[-2]["id"]
    assert json.loads(messages[-1]["data"]) == {"status": "succeeded"}


def test_resume_from_any_cursor_repeats_and_skips_nothing(api, project):
    job_id = _job(api, project["project_id"])
    _write(api, job_id, events=2, metrics=3)
    _write(api, job_id, events=2, metrics=2, first_step=4)
    _set(api, job_id, status="failed", error="boom")
    full = _stream(api, _auth(project), job_id)
    rows = [m for m in full if m["event"] in ("event", "metric")]
    assert len(rows) == 9
    for i, message in enumerate(rows):
        by_header = _stream(api, {**_auth(project), "Last-Event-ID": message["id"]}, job_id)
        assert by_header[0]["event"] == "status"  # always first
        resumed = [m for m in by_header if m["event"] in ("event", "metric")]
        assert resumed == rows[i + 1 :], f"resumed after {message['id']}"
        assert by_header[-1]["event"] == "end"
    by_query = _stream(api, _auth(project), job_id, params={"last_event_id": rows[4]["id"]})
    assert [m for m in by_query if m["event"] in ("event", "metric")] == rows[5:]


def test_rows_written_while_streaming_arrive_in_order_then_end(api, project, monkeypatch):
    from api.config import get_settings

    monkeypatch.setenv("DISTILL_SSE_POLL_SECONDS", "0.05")
    monkeypatch.setenv("DISTILL_SSE_HEARTBEAT_SECONDS", "0.3")
    get_settings.cache_clear()
    job_id = _job(api, project["project_id"])

    def worker() -> None:  # what a worker does, in its own committed units of work
        for step in (1, 3, 5):
            time.sleep(0.4)
            _write(api, job_id, events=1, metrics=2, first_step=step)
            _set(api, job_id, progress_step=step + 1)
        time.sleep(0.4)
        _set(api, job_id, status="succeeded")

    writer = threading.Thread(target=worker)
    writer.start()
    try:
        response = api.client.get(f"/v1/jobs/{job_id}/stream", headers=_auth(project))
    finally:
        writer.join()
    everything = parse_sse(response.text)
    assert any("comments" in m for m in everything), "no keep-alive comment was sent"
    messages = [m for m in everything if "event" in m]
    statuses = [json.loads(m["data"]) for m in messages if m["event"] == "status"]
    assert statuses[0]["status"] == "running" and statuses[-1]["status"] == "succeeded"
    steps_seen = [s["progress"]["step"] for s in statuses]
    assert steps_seen == sorted(steps_seen) and 6 in steps_seen
    metrics = [json.loads(m["data"])["step"] for m in messages if m["event"] == "metric"]
    assert metrics == [1, 2, 3, 4, 5, 6]
    assert [json.loads(m["data"])["message"] for m in messages if m["event"] == "event"] == [
        "event 1", "event 3", "event 5"
    ]  # fmt: skip
    assert messages[-1]["event"] == "end"
    get_settings.cache_clear()


def test_stream_is_scoped_and_checks_its_cursor(api, project):
    job_id = _job(api, project["project_id"], status="succeeded")
    stranger = api.new_project("stranger")
    response = api.client.get(f"/v1/jobs/{job_id}/stream", headers=_auth(stranger))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    bad = api.client.get(
        f"/v1/jobs/{job_id}/stream", headers={**_auth(project), "Last-Event-ID": "12"}
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["header", "Last-Event-ID"]
    no_key = api.client.get(f"/v1/jobs/{job_id}/stream")
    assert no_key.status_code == 401
