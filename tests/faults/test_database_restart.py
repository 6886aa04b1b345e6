"""PostgreSQL restarted mid-job. The database is a private cluster (``initdb`` + ``pg_ctl`` in a
temporary folder, run as the ``postgres`` OS user when the tests run as root) that the test
stops with ``pg_ctl stop -m immediate`` (every backend killed, as on a crash) while a worker
trains, and starts again. The broker is a fresh database on the shared Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.checks import assert_metrics_exact, claims, event_messages
from tests.support.api_client import TERMINAL, Api, distill_spec
from tests.support.private_servers import PrivatePostgres
from tests.support.servers import fresh_redis_url, require_real_stack
from tests.support.stack import wait_until
from tests.support.stack_fixtures import start_real_stack

pytestmark = pytest.mark.realstack


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


def _status(api: Api, job_id: str) -> dict | None:
    """The job, or None while the API cannot reach its database."""
    try:
        return api.job(job_id)
    except (AssertionError, httpx.HTTPError):
        return None


def test_postgres_restarted_mid_job_loses_nothing(
    tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file, private_postgres
):
    """An outage shorter than the lease: the worker's writes (metrics, events, heartbeat,
    checkpoint rows) are retried with backoff on fresh connections, the lease survives, the
    job finishes in its first attempt with every (key, step) recorded exactly once."""
    require_real_stack()
    stack, api = start_real_stack(
        tmp_path, model_root, stack_logs, database_url=private_postgres.url,
        broker_url=fresh_redis_url(), DISTILL_LEASE_SECONDS="40",
    )  # fmt: skip
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=300, checkpoint_every=100)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    stack.start_worker()
    wait_until(lambda: api.job(job_id)["progress"]["step"] >= 5, timeout=240, what="training")

    private_postgres.stop_immediately()
    time.sleep(4)  # the outage: the worker trains on, its writes wait and retry
    private_postgres.start()

    job = wait_until(lambda: (j := _status(api, job_id)) and j["status"] in TERMINAL and j,
                     timeout=300, what="the job to end")  # fmt: skip
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and len(claims(api, job_id)) == 1
    assert_metrics_exact(api, job_id, 300)
    messages = event_messages(api, job_id)
    assert any(m.startswith("database unreachable;") for m in messages), messages
    assert not any(m.startswith("worker lost") for m in messages), "the lease must survive"


def test_postgres_down_longer_than_the_lease_still_loses_nothing(
    tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file, private_postgres
):
    """An outage (12 s) longer than the lease (5 s). When the database returns, either the
    heartbeat renews the lease first (nobody else took the job: it goes on) or the sweeper
    re-queues it and the worker resumes from its last checkpoint. Both end the same way:
    succeeded, every (key, step) exactly once; the events say which path was taken."""
    require_real_stack()
    stack, api = start_real_stack(
        tmp_path, model_root, stack_logs, database_url=private_postgres.url,
        broker_url=fresh_redis_url(), DISTILL_LEASE_SECONDS="5",
    )  # fmt: skip
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=300, checkpoint_every=20)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    stack.start_worker()
    wait_until(lambda: api.job(job_id)["progress"]["step"] >= 25, timeout=240, what="training")

    private_postgres.stop_immediately()
    time.sleep(12)  # the outage: longer than the lease
    private_postgres.start()

    job = wait_until(lambda: (j := _status(api, job_id)) and j["status"] in TERMINAL and j,
                     timeout=300, what="the job to end")  # fmt: skip
    assert job["status"] == "succeeded", job
    assert_metrics_exact(api, job_id, 300)
    messages = event_messages(api, job_id)
    if job["attempts"] == 2:  # the sweeper won: re-queued, then resumed from a checkpoint
        assert any(m.startswith("worker lost; re-queued") for m in messages), messages
        assert sum(m.startswith("resumed from step") for m in messages) == 1, messages
    else:  # the heartbeat won: the lease was renewed and the run went on
        assert job["attempts"] == 1 and len(claims(api, job_id)) == 1, messages
