"""What a claim and a /metrics scrape cost as the jobs table grows (for docs/SCALING.md).

On a fresh PostgreSQL database migrated to head, for each size N: N finished jobs (history),
Q queued jobs spread over P projects, R running ones; then the median time of

* ``claim``: :func:`workers.scheduling.claim_in_session` on one queue, the statement a worker
  runs for every message (rolled back, so every repeat sees the same table);
* ``scrape``: every gauge of :class:`api.metrics.collector.ServiceCollector`, what one
  Prometheus scrape of ``GET /metrics`` reads.

    python -m bench.scheduling_scale [--sizes 1000 10000 100000] [--repeats 15]

Writes ``bench/results/scheduling_scale.json`` and prints a markdown table. Needs PostgreSQL
on 127.0.0.1 (``BENCH_PG_ADMIN``, default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import insert
from sqlalchemy.orm import Session

from api.config import Settings
from api.metrics.collector import ServiceCollector
from api.migrate import upgrade
from models import Job, Project, utcnow
from models.session import engine_for
from workers.celery_app import QUEUES
from workers.scheduling import claim_in_session

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scheduling_scale.json"
ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
STATUSES = ("validating", "queued", "running", "pausing", "paused", "cancelling",
            "succeeded", "failed", "cancelled")  # fmt: skip


def _fill(url: str, *, finished: int, queued: int, running: int, projects: int) -> None:
    now = utcnow()
    engine = engine_for(url)
    with Session(engine) as session:
        ids = [f"prj_{i:05d}" for i in range(projects)]
        session.execute(insert(Project), [{"id": p, "name": p, "created_at": now} for p in ids])
        rows: list[dict[str, Any]] = []
        plan = [("succeeded", finished), ("queued", queued), ("running", running)]
        for status, count in plan:
            for i in range(count):
                rows.append({
                    "id": f"job_{uuid.uuid4().hex[:20]}", "project_id": ids[i % projects],
                    "kind": "distill", "status": status, "spec": {}, "resolved": {},
                    "metadata_": {}, "queue": QUEUES[i % 2], "priority": i % 10, "nproc": 1,
                    "created_at": now, "updated_at": now,
                    "enqueued_at": now - timedelta(seconds=count - i),
                })  # fmt: skip
        for start in range(0, len(rows), 5000):
            session.execute(insert(Job), rows[start : start + 5000])
        session.commit()
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute("ANALYZE")


def _median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm the plan and the cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(size: int, repeats: int, settings: Settings) -> dict[str, Any]:
    name = f"distill_scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        queued, running, projects = max(size // 10, 10), max(size // 100, 2), 50
        _fill(url, finished=size, queued=queued, running=running, projects=projects)
        engine = engine_for(url)

        def claim() -> None:
            with Session(engine) as session:
                assert claim_in_session(session, settings, queue="cpu", worker_id="bench")
                session.rollback()

        def scrape() -> None:
            with Session(engine) as session:
                collector = ServiceCollector(session, queues=QUEUES, statuses=STATUSES,
                                             kinds=("distill", "edit", "inject"),
                                             heartbeat_seconds=10)  # fmt: skip
                assert sum(1 for _ in collector.collect()) > 0
                session.rollback()

        return {
            "finished_jobs": size, "queued_jobs": queued, "running_jobs": running,
            "projects": projects, "claim_ms": _median_ms(claim, repeats),
            "scrape_ms": _median_ms(scrape, repeats),
        }  # fmt: skip
    finally:
        engine_for(url).dispose()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = Settings(project_max_running_jobs=1000, worker_max_nproc=1)
    rows = [measure(size, args.repeats, settings) for size in args.sizes]
    print("| finished jobs | queued | running | claim (median ms) | /metrics scrape (median ms) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['finished_jobs']} | {r['queued_jobs']} | {r['running_jobs']} | "
              f"{r['claim_ms']:.1f} | {r['scrape_ms']:.1f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "repeats": args.repeats}, indent=2) + "\n")


if __name__ == "__main__":
    main()
