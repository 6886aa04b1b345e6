"""Latency of ``GET /v1/jobs/{id}`` and ``GET /v1/jobs`` under 200 concurrent clients, on the
real stack (uvicorn + PostgreSQL + Redis + a Celery worker process) while the worker trains.

    .venv/bin/python -m bench.api_latency                      # 200 clients, 1 s poll, 30 s
    .venv/bin/python -m bench.api_latency --interval 0         # closed loop: the API's capacity

Needs PostgreSQL and Redis on 127.0.0.1 (as the real-stack tests do); it works in a fresh
database and a Redis db of its own and drops the database at the end. The processes are the
ones ``tests/support/stack.py`` starts for the end-to-end tests: ``uvicorn api.app:app`` (one
process) and ``celery worker`` (solo pool). The project holds ``--jobs`` jobs (one trains, the
others are cancelled, so the list has rows to return) before the load starts.

Each client is an ``httpx.AsyncClient`` connection on loopback that alternates the two requests
and then waits ``--interval`` seconds (a dashboard polling a job): 200 clients at 1 s offer
about 200 requests/s. With ``--interval 0`` every client sends its next request at once (closed
loop): then latency is set by throughput (Little's law), which measures capacity, not a
dashboard's experience. The load generator runs on the same cores as the API and the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ml.data.demo_teacher import build_tiny_teacher
from ml.data.instructions import generate_instruction_records, write_jsonl
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack import Stack, stack_env, wait_until

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _client(
    http: httpx.AsyncClient,
    job_id: str,
    deadline: float,
    interval: float,
    samples: dict[str, list[float]],
    errors: list[str],
) -> None:
    which = 0
    while time.perf_counter() < deadline:
        kind, path = (("get", f"/v1/jobs/{job_id}"), ("list", "/v1/jobs"))[which % 2]
        which += 1
        started = time.perf_counter()
        try:
            response = await http.get(path)
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                samples[kind].append(elapsed)
            else:
                errors.append(f"{kind} {response.status_code}")
        except httpx.HTTPError as exc:
            errors.append(f"{kind} {type(exc).__name__}")
        if interval:
            await asyncio.sleep(interval)


async def _load(url: str, key: str, job_id: str, args: argparse.Namespace) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"get": [], "list": []}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=args.timeout
    ) as http:
        deadline = time.perf_counter() + args.seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _client(http, job_id, deadline, args.interval, samples, errors)
                for _ in range(args.clients)
            )
        )
        wall = time.perf_counter() - started
    summary: dict[str, Any] = {}
    for kind, values in samples.items():
        summary[kind] = {
            "requests": len(values),
            "p50_ms": round(1000 * statistics.median(values), 1) if values else None,
            "p99_ms": round(1000 * _percentile(values, 0.99), 1) if values else None,
            "max_ms": round(1000 * max(values), 1) if values else None,
        }
    summary["requests_per_s"] = round(sum(len(v) for v in samples.values()) / wall, 1)
    summary["errors"] = len(errors)
    summary["error_kinds"] = sorted(set(errors))[:10]
    return summary


def _spec(teacher: str, dataset: str, steps: int) -> dict[str, Any]:
    return {
        "kind": "distill",
        "name": "latency-bench",
        "teacher": {"model": teacher},
        "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
        "dataset": {"train": dataset},
        "method": {"loss": "fkl", "params": {"temperature": 1.0}},
        "training": {"max_steps": steps, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 50},
        "evaluation": {"max_examples": 8, "max_new_tokens": 4},
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from api.config import Settings
    from api.migrate import upgrade
    from api.projects.admin import create_project_cli

    model_root = work / "models"
    teacher_dir = build_tiny_teacher(model_root / "teacher", seed=0)
    data = work / "train.jsonl"
    write_jsonl(generate_instruction_records(400, seed=1), data)
    with fresh_postgres_database() as database_url:
        env = stack_env(
            work / "home", model_root, DATABASE_URL=database_url, BROKER_URL=fresh_redis_url()
        )
        (work / "logs").mkdir()
        stack = Stack(env=env, log_dir=work / "logs")
        try:
            upgrade(database_url)
            key = create_project_cli("latency", Settings(DATABASE_URL=database_url))["api_key"]
            stack.start_api()
            api = httpx.Client(
                base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )
            teacher = api.post("/v1/models", json={"path": str(teacher_dir)}).json()["id"]
            with data.open("rb") as fh:
                dataset = api.post("/v1/datasets", files={"file": ("t.jsonl", fh)}).json()["id"]
            for _ in range(args.jobs - 1):  # rows for the list; cancelled while still queued
                made = api.post("/v1/jobs", json=_spec(teacher, dataset, 10)).json()
                api.post(f"/v1/jobs/{made['id']}/cancel")
            job_id = api.post("/v1/jobs", json=_spec(teacher, dataset, 100000)).json()["id"]
            stack.start_worker()
            try:
                wait_until(
                    lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "running",
                    timeout=300,
                    what="the job to start training",
                )
            except TimeoutError:
                print(api.get(f"/v1/jobs/{job_id}").json(), stack.logs())
                raise
            summary = asyncio.run(_load(stack.url, key, job_id, args))
            print(json.dumps(summary))  # before anything else can fail
            try:  # "running": the worker trained throughout the load
                summary["job_status_after"] = api.get(f"/v1/jobs/{job_id}").json()["status"]
                api.post(f"/v1/jobs/{job_id}/cancel")
            except httpx.HTTPError as exc:
                summary["job_status_after"] = f"unknown ({type(exc).__name__})"
            api.close()
            return summary
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="pause between requests")
    parser.add_argument("--jobs", type=int, default=20, help="jobs in the project")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "api_latency.json")
    args = parser.parse_args()
    require_real_stack()
    with tempfile.TemporaryDirectory(prefix="api-latency-") as tmp:
        summary = run(args, Path(tmp))
    goal = 50.0
    for kind in ("get", "list"):
        p99 = summary[kind]["p99_ms"]
        verdict = "n/a" if p99 is None else f"{p99 / goal:.2f}x the 50 ms goal"
        print(f"{kind:>4}: p50 {summary[kind]['p50_ms']} ms, p99 {p99} ms ({verdict})")
    print(json.dumps(summary, indent=2))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
