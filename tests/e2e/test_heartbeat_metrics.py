"""A real ``celery worker`` process and the uvicorn API, on SQLite (with the serverless broker)
and on PostgreSQL + Redis: the worker's heartbeat row shows in GET /metrics (behind a metrics
token), names the job it runs while it runs it, and the job's JSON log lines carry its job and
project ids. After the worker stops it is no longer counted alive: a clean stop (SIGTERM)
deletes its row, a crash (SIGKILL) leaves it to turn "lost" after three heartbeat intervals."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from models import Job
from models.session import session_scope
from models.tables import WorkerHeartbeat
from tests.support.api_client import TERMINAL, distill_spec
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack import Stack, wait_until
from tests.support.stack_fixtures import start_real_stack
from workers.celery_app import QUEUES

TOKEN = "scrape-token-e2e"


def scrape(stack: Stack) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def heartbeat_rows(database_url: str) -> list[WorkerHeartbeat]:
    with session_scope(database_url) as session:
        rows = list(session.scalars(select(WorkerHeartbeat)))
        session.expunge_all()
    return rows


def json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.realstack)]
)
def test_worker_heartbeat_metrics_and_json_logs(
    backend, tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file
):
    env = {"DISTILL_LOG_FORMAT": "json", "DISTILL_METRICS_TOKEN": TOKEN}
    if backend == "sqlite":
        home = tmp_path / "home"
        home.mkdir()
        urls = {"database_url": f"sqlite:///{home / 'distill.db'}",
                "broker_url": f"sqla+sqlite:///{home / 'broker.db'}"}  # fmt: skip
        _run(tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file, urls, env, backend)
        return
    require_real_stack()
    with fresh_postgres_database() as database_url:
        urls = {"database_url": database_url, "broker_url": fresh_redis_url()}
        _run(tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file, urls, env, backend)


def _run(tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file, urls, env, backend) -> None:
    stack, api = start_real_stack(tmp_path, model_root, stack_logs, **urls, **env)
    database_url = urls["database_url"]
    assert httpx.get(f"{stack.url}/metrics").status_code == 401  # the token is required

    from client.serve import worker_command

    command = [("INFO" if part == "WARNING" else part) for part in worker_command("cpu,gpu")]
    worker = stack._start("worker", command)  # at INFO, so the job's start is logged
    samples = wait_until(
        lambda: (s := scrape(stack)) and value(s, "distill_workers", state="alive") == 1 and s,
        timeout=120,
        what="the worker's first heartbeat in /metrics",
    )
    (row,) = heartbeat_rows(database_url)
    assert row.worker_id.startswith(f"{socket.gethostname()}:{worker.pid}:")
    assert (row.hostname, row.pid, row.queues) == (socket.gethostname(), worker.pid, ["cpu", "gpu"])
    age = value(samples, "distill_worker_last_heartbeat_seconds",
                worker=row.worker_id, hostname=row.hostname, queues="cpu,gpu")  # fmt: skip
    assert age is not None and 0 <= age < 3 * 1.0 + 2  # DISTILL_HEARTBEAT_SECONDS=1 in tests
    assert value(samples, "distill_queue_workers", queue="cpu") == 1
    assert value(samples, "distill_queue_workers", queue="gpu") == 1
    assert all(value(samples, "distill_queue_workers", queue=q) == 0
               for q in QUEUES if q not in ("cpu", "gpu"))  # fmt: skip

    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=2000, checkpoint_every=0)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    wait_until(lambda: api.job(job_id)["progress"]["step"] >= 3, timeout=180, what="3 steps")
    wait_until(lambda: heartbeat_rows(database_url)[0].current_job_id == job_id, timeout=10,
               what="the heartbeat naming the running job")  # fmt: skip
    samples = scrape(stack)
    assert value(samples, "distill_jobs", state="running", kind="distill") == 1
    assert value(samples, "distill_queue_depth", queue="cpu") == 0
    step_seconds = value(samples, "distill_job_step_seconds", queue="cpu")
    assert step_seconds is not None and 0 < step_seconds < 60

    assert api.call("POST", f"/v1/jobs/{job_id}/cancel")["status"] == "cancelling"
    assert api.wait_status(job_id, TERMINAL, timeout=60)["status"] == "cancelled"
    samples = scrape(stack)
    assert value(samples, "distill_jobs", state="cancelled", kind="distill") == 1
    assert value(samples, "distill_jobs", state="running", kind="distill") == 0
    assert value(samples, "distill_job_step_seconds", queue="cpu") is None

    with session_scope(database_url) as session:
        project_id = session.get(Job, job_id).project_id  # type: ignore[union-attr]
    lines = json_lines(stack.log_dir / "worker.log")
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    started = [line for line in lines if line["message"].startswith("running distill job")]
    assert len(started) == 1
    assert started[0]["job_id"] == job_id and started[0]["project_id"] == project_id
    assert started[0]["message"] == f"running distill job {job_id} from queue cpu"
    assert not any("job_id" in line for line in lines if line["ts"] < started[0]["ts"])

    if backend == "sqlite":  # a clean stop: the row goes with the worker
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        assert heartbeat_rows(database_url) == []
        samples = scrape(stack)
        assert value(samples, "distill_workers", state="alive") == 0
        assert value(samples, "distill_workers", state="lost") == 0
    else:  # a crash: the row stays and turns lost after three intervals
        stack.kill("worker")
        samples = wait_until(
            lambda: (s := scrape(stack)) and value(s, "distill_workers", state="lost") == 1 and s,
            timeout=30,
            what="the killed worker counted lost",
        )
        assert value(samples, "distill_workers", state="alive") == 0
        assert value(samples, "distill_queue_workers", queue="cpu") == 0
