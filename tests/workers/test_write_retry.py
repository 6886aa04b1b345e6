"""Worker writes retried whole: a transient database failure is retried until it clears, a
constraint error is not, and a write repeated after it committed changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from api.projects.service import create as create_project
from models import Job, Metric, new_id, utcnow
from models.session import session_scope
from workers.db_retry import run_unit
from workers.runtime import JobRecorder, claim_job


def _running_job(settings, worker_id: str) -> str:
    with session_scope(settings.resolved_database_url) as session:
        project, _ = create_project(session=session, name="retry")
        job = Job(id=new_id("job"), project_id=project.id, kind="distill", status="queued",
                  spec={}, resolved={}, enqueued_at=utcnow())  # fmt: skip
        session.add(job)
    assert claim_job(settings, job.id, worker_id)
    return job.id


def test_a_metrics_batch_written_twice_is_recorded_once(settings):
    """What a retry after a lost commit reply does: the same batch again, no error, no copy."""
    from ml.distillation.recipe import MetricPoint

    job_id = _running_job(settings, "me")
    recorder = JobRecorder(settings, job_id, "me")
    batch = [MetricPoint(key, step, 0.5) for step in (1, 2, 3) for key in ("train/loss", "x")]
    recorder.metrics(batch)
    recorder.metrics(batch)
    with session_scope(settings.resolved_database_url) as session:
        count = session.scalar(select(func.count()).where(Metric.job_id == job_id))
    assert count == 6


def test_a_database_that_comes_back_is_retried_until_the_write_succeeds(tmp_path: Path):
    """A real transient failure: SQLite cannot open a file in a folder that is not there yet.
    The folder appears during the second back-off; the third try succeeds."""
    folder = tmp_path / "not-yet"
    url = f"sqlite:///{folder / 'db.sqlite'}"
    tries: list[int] = []
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            folder.mkdir()

    def write(session, attempt: int) -> int:
        tries.append(attempt)
        return int(session.connection().exec_driver_sql("select 41 + 1").scalar_one())

    assert run_unit(url, write, deadline_seconds=30, what="test", sleep=nap) == 42
    assert tries == [0, 1, 2] and naps == [0.25, 0.5]


def test_a_database_that_stays_away_fails_after_the_deadline(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}"
    with pytest.raises(OperationalError):
        run_unit(url, lambda s, _: s.connection().exec_driver_sql("select 1"),
                 deadline_seconds=1.0, what="test", sleep=lambda _: None)  # fmt: skip


def test_a_constraint_error_is_not_retried(settings):
    tries: list[int] = []

    def orphan(session, attempt: int) -> None:
        tries.append(attempt)
        session.add(Job(id=new_id("job"), project_id="prj_missing", kind="distill",
                        status="queued", spec={}, resolved={}))  # fmt: skip

    with pytest.raises(IntegrityError):
        run_unit(settings.resolved_database_url, orphan, deadline_seconds=30, what="test")
    assert tries == [0]
