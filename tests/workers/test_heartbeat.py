"""Worker heartbeat rows on SQLite and PostgreSQL: inserted once then updated, the job the worker
holds the lease of as ``current_job_id``, day-old rows pruned, the row deleted on a clean stop.
A real worker process writing its row is tests/e2e/test_heartbeat_metrics.py."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select

from models import Job, Project, new_id, utcnow
from models.session import session_scope
from models.tables import WorkerHeartbeat
from workers.heartbeat import FORGET_AFTER, Heartbeat, WorkerIdentity, beat_once


def rows(settings) -> dict[str, WorkerHeartbeat]:
    with session_scope(settings.resolved_database_url) as session:
        found = session.scalars(select(WorkerHeartbeat)).all()
        session.expunge_all()
    return {row.worker_id: row for row in found}


def test_beat_inserts_then_updates_and_names_the_leased_job(settings):
    worker = WorkerIdentity(worker_id="host:11:abcdef", queues=["cpu", "gpu"], hostname="host",
                            pid=11)  # fmt: skip
    beat_once(settings, worker)
    first = rows(settings)["host:11:abcdef"]
    assert (first.hostname, first.pid, first.queues) == ("host", 11, ["cpu", "gpu"])
    assert first.current_job_id is None
    assert first.started_at == worker.started_at

    project, job_id = new_id("prj"), new_id("job")
    with session_scope(settings.resolved_database_url) as session:
        session.add(Project(id=project, name="hb"))
        session.flush()
        session.add(Job(id=job_id, project_id=project, kind="distill", status="running", spec={},
                        lease_owner=worker.worker_id,
                        lease_expires_at=utcnow() + timedelta(minutes=1)))  # fmt: skip
        # Another worker's job is not this worker's.
        session.add(Job(id=new_id("job"), project_id=project, kind="distill", status="running",
                        spec={}, lease_owner="elsewhere:1:000000"))  # fmt: skip
    time.sleep(0.01)
    beat_once(settings, worker)
    second = rows(settings)
    assert list(second) == ["host:11:abcdef"]  # updated, not inserted again
    assert second["host:11:abcdef"].current_job_id == job_id
    assert second["host:11:abcdef"].last_seen_at > first.last_seen_at

    with session_scope(settings.resolved_database_url) as session:
        session.get(Job, job_id).status = "succeeded"  # type: ignore[union-attr]
    beat_once(settings, worker)
    assert rows(settings)["host:11:abcdef"].current_job_id is None


def test_day_old_rows_are_pruned_recent_lost_ones_kept(settings):
    now = utcnow()
    with session_scope(settings.resolved_database_url) as session:
        for worker_id, age in (("old:1:000000", FORGET_AFTER + timedelta(minutes=1)),
                               ("lost:2:000000", timedelta(hours=1))):  # fmt: skip
            session.add(WorkerHeartbeat(worker_id=worker_id, hostname="h", pid=1, queues=["cpu"],
                                        started_at=now - age, last_seen_at=now - age))  # fmt: skip
    beat_once(settings, WorkerIdentity(worker_id="new:3:000000", queues=["cpu"]))
    assert set(rows(settings)) == {"lost:2:000000", "new:3:000000"}


def test_thread_beats_until_stopped_then_deletes_its_row(settings):
    settings = settings.model_copy(update={"heartbeat_seconds": 0.1})
    thread = Heartbeat(settings, WorkerIdentity(worker_id="t:4:000000", queues=["gpu"]))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        seen = []
        while len(set(seen)) < 3 and time.monotonic() < deadline:
            row = rows(settings).get("t:4:000000")
            if row is not None:
                seen.append(row.last_seen_at)
            time.sleep(0.05)
        assert len(set(seen)) >= 3, "the row was not refreshed every interval"
    finally:
        thread.stop()
    assert not thread.is_alive()
    assert rows(settings) == {}
