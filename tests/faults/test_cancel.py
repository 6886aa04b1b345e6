"""Cancel in every state a job can be in: queued (never started), running, and while a
checkpoint is being written. The job ends ``cancelled``, its lease is cleared, and the worker
takes the next job (its resources are free)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from models import Job
from models.session import session_scope
from tests.faults.checks import assert_checkpoints_intact, assert_metrics_exact, event_messages
from tests.support.api_client import TERMINAL, Api, distill_spec
from tests.support.stack import wait_until

pytestmark = pytest.mark.realstack


def _lease(database_url: str, job_id: str) -> tuple[str | None, object]:
    with session_scope(database_url) as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        return job.lease_owner, job.lease_expires_at


def _next_job_runs(api: Api, teacher: str, dataset: str) -> None:
    """The worker is free again: a short job behind the cancelled one succeeds."""
    job_id = api.call("POST", "/v1/jobs", 201, json=distill_spec(teacher, dataset, max_steps=4))[
        "id"
    ]
    job = api.wait_status(job_id, TERMINAL, timeout=300)
    assert job["status"] == "succeeded", job
    assert_metrics_exact(api, job_id, 4)


def test_cancel_queued_job_never_starts(real_stack, tiny_teacher, jsonl_file):
    stack, api, _ = real_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    job_id = api.call("POST", "/v1/jobs", 201, json=distill_spec(teacher, dataset))["id"]
    assert api.call("POST", f"/v1/jobs/{job_id}/cancel")["status"] == "cancelled"
    stack.start_worker()  # its message is still in Redis: the worker must drop it
    _next_job_runs(api, teacher, dataset)
    wait_until(lambda: any(m.startswith("message dropped") for m in event_messages(api, job_id)),
               timeout=60, what="the dropped message")  # fmt: skip
    job = api.job(job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 0
    assert api.call("GET", f"/v1/jobs/{job_id}/metrics")["items"] == []
    messages = event_messages(api, job_id)
    assert "cancelled before it started" in messages
    assert not any(m.startswith("claimed by") for m in messages)


def test_cancel_running_job_stops_between_steps(real_stack, tiny_teacher, jsonl_file):
    stack, api, _ = real_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=2000, checkpoint_every=0)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    stack.start_worker()
    wait_until(lambda: api.job(job_id)["progress"]["step"] >= 2, timeout=180, what="progress")
    assert api.call("POST", f"/v1/jobs/{job_id}/cancel")["status"] == "cancelling"
    job = api.wait_status(job_id, TERMINAL, timeout=60)
    assert job["status"] == "cancelled" and job["progress"]["step"] < 2000
    stopped = [m for m in event_messages(api, job_id) if m.startswith("cancelled at step")]
    assert len(stopped) == 1
    assert_metrics_exact(api, job_id, int(stopped[0].split()[3]))
    assert _lease(stack.env["DATABASE_URL"], job_id) == (None, None)
    _next_job_runs(api, teacher, dataset)


def test_cancel_while_a_checkpoint_is_written(real_stack, tiny_teacher, jsonl_file):
    """A checkpoint every step; the cancel is sent the moment a checkpoint's temporary
    directory is seen (the write is under way). The checkpoint completes and is recorded, or
    is not there at all: every recorded checkpoint matches its hash, no temporary directory is
    left, the job ends cancelled with its lease cleared."""
    stack, api, _ = real_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=2000, checkpoint_every=1)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    checkpoint_dir = Path(stack.env["DISTILL_HOME"]) / "artifacts" / "jobs" / job_id / "checkpoints"
    stack.start_worker()
    wait_until(lambda: api.job(job_id)["progress"]["step"] >= 3, timeout=240, what="progress")

    def writing() -> bool:  # polled fast: a tiny checkpoint takes tens of milliseconds
        return any(name.startswith(".") for name in os.listdir(checkpoint_dir))

    deadline = time.monotonic() + 60
    while not writing():
        assert time.monotonic() < deadline, "never saw a checkpoint being written"
        time.sleep(0.002)
    assert api.call("POST", f"/v1/jobs/{job_id}/cancel")["status"] == "cancelling"

    job = api.wait_status(job_id, TERMINAL, timeout=60)
    assert job["status"] == "cancelled", job
    stopped = [m for m in event_messages(api, job_id) if m.startswith("cancelled at step")]
    assert len(stopped) == 1
    step = int(stopped[0].split()[3])
    recorded = assert_checkpoints_intact(api, job_id, checkpoint_dir)
    assert recorded and recorded[-1] == step, (recorded, step)  # every step checkpointed
    assert_metrics_exact(api, job_id, step)
    assert _lease(stack.env["DATABASE_URL"], job_id) == (None, None)
    _next_job_runs(api, teacher, dataset)
