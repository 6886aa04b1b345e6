"""Worker faults on the real stack (PostgreSQL, Redis, a uvicorn API, separate `celery worker`
processes): a worker SIGKILLed mid-job, the same message delivered twice."""

from __future__ import annotations

from collections import Counter

import pytest
from celery import Celery

from tests.support.api_client import TERMINAL, distill_spec
from tests.support.stack import wait_until
from workers.celery_app import DISTILL_TASK

pytestmark = pytest.mark.realstack


def test_worker_killed_mid_job_resumes_from_checkpoint(real_stack, tiny_teacher, jsonl_file):
    stack, api, _ = real_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=30, checkpoint_every=4)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    stack.start_worker("worker-a")

    def checkpoint_at_4_and_running() -> bool:
        ckpts = api.call("GET", f"/v1/jobs/{job_id}/checkpoints")["items"]
        return any(c["step"] >= 4 for c in ckpts) and api.job(job_id)["progress"]["step"] < 30

    wait_until(checkpoint_at_4_and_running, timeout=240, what="a checkpoint", poll=0.1)
    stack.kill("worker-a")
    killed_at = api.job(job_id)["progress"]["step"]
    stack.start_worker("worker-b")
    job = api.wait_status(job_id, TERMINAL, timeout=300)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2 and job["progress"]["step"] == 30

    messages = [e["message"] for e in api.events(job_id)]
    assert any(m.startswith("worker lost; re-queued") for m in messages)
    resumed = [m for m in messages if m.startswith("resumed from step")]
    assert len(resumed) == 1
    resumed_step = int(resumed[0].split()[3])
    assert 4 <= resumed_step <= max(killed_at, 4)

    losses = api.metrics(job_id, "train/loss")
    steps = [m["step"] for m in losses]
    assert sorted(steps) == list(range(1, 31)), "every step recorded exactly once"
    assert all(count == 1 for count in Counter(steps).values())
    assert job["output_model_id"] and job["result"]["student"]["examples"] == 16


def test_duplicate_message_runs_the_job_once(real_stack, tiny_teacher, jsonl_file):
    stack, api, broker_url = real_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    job_id = api.call("POST", "/v1/jobs", 201, json=distill_spec(teacher, dataset, max_steps=6))[
        "id"
    ]
    sender = Celery(broker=broker_url)
    sender.send_task(DISTILL_TASK, args=[job_id], queue="cpu")  # the same id, delivered twice
    stack.start_worker("worker-a")
    stack.start_worker("worker-b")
    job = api.wait_status(job_id, TERMINAL, timeout=240)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    claims = [e for e in api.events(job_id) if e["message"].startswith("claimed by")]
    assert len(claims) == 1


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
    assert any(e["message"].startswith("cancelled at step") for e in api.events(job_id))
