"""The pipeline surface end to end, on `distill serve` (the embedded default) and on the real
stack (PostgreSQL, Redis, a separate worker process): an Idempotency-Key retry gets the same
job, the job's SSE stream carries its status, events and every metric once until `end` (and
resumes from any cursor), its transitions arrive at a real HTTP receiver signed and in order,
and `distill jobs watch` follows it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from standardwebhooks.webhooks import Webhook

from client.job_stream import parse_sse
from tests.e2e.conftest import TERMINAL, Api, credentials, distill_spec
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack import ROOT, Stack, stack_env, wait_until
from tests.support.stack_fixtures import start_real_stack
from tests.support.webhook_receiver import WebhookReceiver


def _read_stream(api: Api, job_id: str, last_event_id: str | None = None) -> list[dict]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    messages = []
    with api.http.stream("GET", f"/v1/jobs/{job_id}/stream", headers=headers) as response:
        assert response.status_code == 200
        for event, data, message_id, _retry in parse_sse(response.iter_lines()):
            if event:
                messages.append({"event": event, "data": json.loads(data), "id": message_id})
            if event == "end":
                break
    return messages


HOOK_ENV = {"DISTILL_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32",
            "DISTILL_WEBHOOK_POLL_SECONDS": "0.2", "DISTILL_SSE_POLL_SECONDS": "0.2"}  # fmt: skip


def test_on_distill_serve(tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file):
    """The embedded default: SQLite, the SQLAlchemy broker, the worker `distill serve` starts."""
    receiver = WebhookReceiver()
    home, logs = tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env=stack_env(home, model_root, **HOOK_ENV), log_dir=logs)
    stack_logs.append(stack)
    try:
        # `distill serve`, waiting longer than the shared fixture: this machine is often loaded.
        stack._start(
            "serve", [sys.executable, "-m", "client.cli", "serve", "--port", str(stack.port)]
        )
        stack.wait_healthy(timeout=300)
        api = Api(stack.url, credentials(home))
        _drive(api, stack.env, receiver, tiny_teacher, jsonl_file)
    finally:
        receiver.close()


@pytest.mark.realstack
def test_on_the_real_stack(tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file):
    """PostgreSQL, Redis, the uvicorn API and a separate Celery worker process."""
    require_real_stack()
    receiver = WebhookReceiver()
    try:
        with fresh_postgres_database() as database_url:
            stack, api = start_real_stack(
                tmp_path, model_root, stack_logs, database_url=database_url,
                broker_url=fresh_redis_url(), **HOOK_ENV,
            )  # fmt: skip
            try:
                stack.start_worker()
                key = api.http.headers["authorization"].removeprefix("Bearer ")
                cli_env = {**stack.env, "DISTILL_URL": stack.url, "DISTILL_API_KEY": key}
                _drive(api, cli_env, receiver, tiny_teacher, jsonl_file)
            finally:
                stack.stop()  # before the database is dropped
    finally:
        receiver.close()


def _drive(api: Api, cli_env: dict[str, str], receiver: WebhookReceiver, tiny_teacher,
           jsonl_file) -> None:  # fmt: skip
    hook = api.call("POST", "/v1/webhooks", 201, json={"url": receiver.url})
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset)

    first = api.http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "nightly-7"})
    retry = api.http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "nightly-7"})
    assert first.status_code == retry.status_code == 201, first.text
    assert retry.content == first.content and retry.headers["idempotent-replayed"] == "true"
    job_id = first.json()["id"]
    assert len(api.call("GET", "/v1/jobs")["items"]) == 1

    messages = _read_stream(api, job_id)  # opened while queued or running: follows it live
    assert messages[0]["event"] == "status" and messages[-1]["event"] == "end"
    statuses = [m["data"]["status"] for m in messages if m["event"] == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    losses = [m["data"]["step"] for m in messages
              if m["event"] == "metric" and m["data"]["key"] == "train/loss"]  # fmt: skip
    assert losses == list(range(1, 13))  # every step once, in order
    events = [m["data"] for m in messages if m["event"] == "event"]
    assert events == api.events(job_id)

    # Resume from a cursor taken mid-run: exactly the events and metrics after it, per kind
    # (a live stream interleaves the two by poll, a resumed one by what is already there).
    rows = [m for m in messages if m["event"] in ("event", "metric")]
    cursor = rows[len(rows) // 2]["id"]
    after_event, after_metric = (int(part) for part in cursor.split("-"))

    def of_kind(ms: list[dict], kind: str) -> list[dict]:
        return [m["data"] for m in ms if m["event"] == kind]

    resumed = _read_stream(api, job_id, last_event_id=cursor)
    assert of_kind(resumed, "event") == [e for e in events if e["id"] > after_event]
    metric_ids = [int(m["id"].split("-")[1]) for m in rows if m["event"] == "metric"]
    later_metrics = [m for m, i in zip(of_kind(rows, "metric"), metric_ids, strict=True)
                     if i > after_metric]  # fmt: skip
    assert of_kind(resumed, "metric") == later_metrics and later_metrics

    wait_until(lambda: len(receiver.delivered) >= 3, timeout=60, what="three webhooks")
    bodies = [Webhook(hook["secret"]).verify(r.body, r.headers) for r in receiver.delivered]
    assert [b["type"] for b in bodies] == ["job.queued", "job.running", "job.succeeded"]
    assert {b["data"]["id"] for b in bodies} == {job_id}
    assert bodies[-1]["data"]["output_model_id"]
    log = api.call("GET", f"/v1/webhooks/{hook['id']}/deliveries")["items"]
    assert [d["status"] for d in log] == ["delivered"] * 3

    watched = subprocess.run(
        [sys.executable, "-m", "client.cli", "jobs", "watch", job_id],
        cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert "[INFO] job validated and queued" in watched.stderr
    assert api.job(job_id)["status"] in TERMINAL
