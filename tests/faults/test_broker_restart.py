"""Redis restarted mid-job. The broker is a private ``redis-server`` (no persistence, so the
restart loses every message) that the test SIGKILLs while a worker trains and starts again on
the same port. The database is a fresh one on the shared PostgreSQL."""

from __future__ import annotations

import time

import pytest

from tests.faults.checks import assert_metrics_exact, claims, event_messages
from tests.support.api_client import TERMINAL, distill_spec
from tests.support.private_servers import PrivateRedis
from tests.support.servers import fresh_postgres_database, require_real_stack
from tests.support.stack import wait_until
from tests.support.stack_fixtures import start_real_stack

pytestmark = pytest.mark.realstack


def test_redis_restarted_mid_job_loses_nothing(
    tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file
):
    """Job A trains through a broker outage and finishes once with every step recorded once;
    job B, submitted while the broker is down, stays ``queued`` (its enqueue failed after the
    commit) and the sweeper re-sends it once Redis is back: the same worker, reconnected, runs
    it."""
    require_real_stack()
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        with fresh_postgres_database() as database_url:
            stack, api = start_real_stack(
                tmp_path, model_root, stack_logs, database_url=database_url,
                broker_url=redis.url, DISTILL_REQUEUE_AFTER_SECONDS="4",
            )  # fmt: skip
            teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
            spec = distill_spec(teacher, dataset, max_steps=300, checkpoint_every=100)
            job_a = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
            stack.start_worker()
            wait_until(lambda: api.job(job_a)["progress"]["step"] >= 2, timeout=240,
                       what="job A training")  # fmt: skip

            redis.kill()
            outage_from = api.job(job_a)["progress"]["step"]
            started = time.monotonic()
            job_b = api.call("POST", "/v1/jobs", 201, json=distill_spec(teacher, dataset))["id"]
            assert time.monotonic() - started < 30, "a broker outage must not hang job creation"
            assert api.job(job_b)["status"] == "queued"
            # The worker keeps training without its broker: the job lives in the database.
            wait_until(lambda: api.job(job_a)["progress"]["step"] >= outage_from + 3,
                       timeout=120, what="job A to train on during the outage")  # fmt: skip
            assert api.job(job_b)["status"] == "queued", "nothing can have taken B: no broker"
            assert api.job(job_a)["status"] == "running", "make job A longer: it ended already"
            redis.start()

            done_a = api.wait_status(job_a, TERMINAL, timeout=300)
            assert done_a["status"] == "succeeded", done_a
            assert done_a["attempts"] == 1 and len(claims(api, job_a)) == 1
            assert_metrics_exact(api, job_a, 300)

            done_b = api.wait_status(job_b, TERMINAL, timeout=300)
            assert done_b["status"] == "succeeded", done_b
            assert done_b["attempts"] == 1 and len(claims(api, job_b)) == 1
            assert_metrics_exact(api, job_b, 12)
            # B never had a message (its enqueue failed). What started it: the sweeper's re-send
            # (a "re-enqueued" event) or the wake-up that job A's end sends to the queues where
            # its project still has queued jobs (workers/scheduling.py), so after A finished.
            re_sent = any("re-enqueued" in m for m in event_messages(api, job_b))
            assert re_sent or done_b["started_at"] >= done_a["finished_at"], (done_a, done_b)
            stack.stop()
    finally:
        redis.close()
