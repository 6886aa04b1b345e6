"""Worker faults on the real stack (PostgreSQL, Redis, a uvicorn API, separate `celery worker`
processes): a worker SIGKILLed mid-job, the same message delivered twice, the Redis visibility
timeout passing while a long job runs."""

from __future__ import annotations

from collections import Counter

import pytest
from celery import Celery

from tests.faults.checks import assert_metrics_exact, claims, event_messages
from tests.support.api_client import TERMINAL, distill_spec
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack import wait_until
from tests.support.stack_fixtures import start_real_stack
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


def test_visibility_timeout_redelivery_runs_the_job_once(
    tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file
):
    """A visibility timeout of 3 s, far below the job's length: Redis hands the unacknowledged
    message of the running job to a second, idle worker. The claim drops it (the job is
    running under a live lease) and says so in the job's events; the job has one claim and
    every step once. (It is cancelled once the redelivery is seen, so that its length never
    races the redelivery, on an idle machine or a busy one.)"""
    require_real_stack()
    with fresh_postgres_database() as database_url:
        broker_url = fresh_redis_url()
        stack, api = start_real_stack(
            tmp_path, model_root, stack_logs, database_url=database_url,
            broker_url=broker_url, DISTILL_VISIBILITY_TIMEOUT_SECONDS="3",
        )  # fmt: skip
        teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
        stack.start_worker("worker-a")
        stack.start_worker("worker-b")
        # Both consume before the job exists: one runs it, the other is idle when Redis
        # hands the unacknowledged message out again 3 s later.
        wait_until(lambda: _waiting_consumers(broker_url) == 2, timeout=240,
                   what="two idle workers")  # fmt: skip
        spec = distill_spec(teacher, dataset, max_steps=20000, checkpoint_every=0)
        job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]

        def redelivered_while_running() -> str | None:
            dropped = [m for m in event_messages(api, job_id) if m.startswith("message dropped")]
            return dropped[0] if dropped else None

        dropped = wait_until(redelivered_while_running, timeout=180, what="the redelivery")
        assert dropped.endswith("the job is running"), dropped
        (claim,) = claims(api, job_id)
        claimer = claim.split()[2]
        assert claimer not in dropped, "the redelivery went to the worker that runs the job"

        # Long enough to outlast the redelivery on an idle machine too; stopped once it is seen.
        assert api.call("POST", f"/v1/jobs/{job_id}/cancel")["status"] == "cancelling"
        job = api.wait_status(job_id, TERMINAL, timeout=120)
        assert job["status"] == "cancelled", job
        assert job["attempts"] == 1 and len(claims(api, job_id)) == 1
        stopped = [m for m in event_messages(api, job_id) if m.startswith("cancelled at step")]
        assert_metrics_exact(api, job_id, int(stopped[0].split()[3]))
        stack.stop()


def _waiting_consumers(broker_url: str) -> int:
    """Workers blocked in BRPOP on this test's Redis database: consuming, and idle."""
    import redis

    db = broker_url.rsplit("/", 1)[1]
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(1 for c in client.client_list() if c.get("db") == db and c.get("cmd") == "brpop")
    finally:
        client.close()
