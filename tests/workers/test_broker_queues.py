"""The embedded broker's queues are created once, whichever processes start together.

kombu's SQLAlchemy transport creates its tables and queue rows on first use, guarded by an
in-process lock only; processes starting at once (the API and its worker) raced, and the loser
died with "UNIQUE constraint failed: kombu_queue.name" (CI, 2026-12-05). Real processes here,
released together on a wall-clock instant, each several times on a fresh broker file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support.stack import ROOT

ROUNDS = 3
PROCESSES = 8

_PARTICIPANT = textwrap.dedent(
    """
    import sys, time
    from celery import Celery
    from workers.celery_app import declare_broker_queues
    start, folder, rounds = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    apps = [Celery(broker=f"sqla+sqlite:///{folder}/broker-{r}.db") for r in range(rounds)]
    for r, app in enumerate(apps):
        while time.time() < start + 1.5 * r:
            time.sleep(0.0005)
        declare_broker_queues(app)
    print("declared")
    """
)


def test_processes_starting_together_all_get_the_queues(tmp_path: Path) -> None:
    from workers.celery_app import QUEUES

    start = time.time() + 15  # after every participant has imported celery, even on 2 cores
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PARTICIPANT, str(start), str(tmp_path), str(ROUNDS)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "declared", err[-3000:]
    assert time.time() > start, "participants were not released together"
    for r in range(ROUNDS):
        with sqlite3.connect(tmp_path / f"broker-{r}.db") as db:
            names = sorted(name for (name,) in db.execute("SELECT name FROM kombu_queue"))
        assert names == sorted(QUEUES)


def test_redis_brokers_are_left_alone() -> None:
    """Nothing to declare on Redis, and no connection is opened for it (none listens here)."""
    from celery import Celery

    from workers.celery_app import declare_broker_queues

    declare_broker_queues(Celery(broker="redis://127.0.0.1:1/0"), attempts=1)
