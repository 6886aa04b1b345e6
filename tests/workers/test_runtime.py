"""Claim, lease, sweeper and resume bookkeeping against a real database (no broker needed:
the sweeper's re-enqueue goes to the unread test broker)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from api.projects.service import create as create_project
from models import Job, JobEvent, Metric, new_id, utcnow
from models.session import session_scope
from workers.runtime import JobGone, JobRecorder, LeaseKeeper, LeaseLost, claim_job
from workers.sweeper import sweep_once


def _queued_job(settings) -> str:
    with session_scope(settings.resolved_database_url) as session:
        project, _ = create_project(session=session, name="w")
        job = Job(id=new_id("job"), project_id=project.id, kind="distill", status="queued",
                  spec={}, resolved={}, enqueued_at=utcnow())  # fmt: skip
        session.add(job)
        return job.id


def _job(settings, job_id) -> Job:
    with session_scope(settings.resolved_database_url) as session:
        return session.scalars(select(Job).where(Job.id == job_id)).one()


def _expire_lease(settings, job_id) -> None:
    with session_scope(settings.resolved_database_url) as session:
        past = utcnow() - timedelta(seconds=1)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=past))


def test_only_one_of_many_concurrent_claims_wins(settings):
    job_id = _queued_job(settings)
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def claim(i: int) -> None:
        barrier.wait()
        wins.append(claim_job(settings, job_id, f"worker-{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    job = _job(settings, job_id)
    assert job.status == "running" and job.attempts == 1 and job.lease_owner.startswith("worker-")


def test_claiming_a_missing_job_raises_a_typed_error(settings):
    with pytest.raises(JobGone):
        claim_job(settings, "job_missing", "w")


def test_heartbeat_renews_and_sees_cancel_and_loss(settings):
    job_id = _queued_job(settings)
    assert claim_job(settings, job_id, "me")
    before = _job(settings, job_id).lease_expires_at
    keeper = LeaseKeeper(settings, job_id, "me")
    keeper.renew()
    assert _job(settings, job_id).lease_expires_at >= before and not keeper.should_stop()
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="cancelling"))
    keeper.renew()
    assert keeper.cancel_requested.is_set() and not keeper.lost.is_set()
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_owner="someone-else"))
    keeper.renew()
    assert keeper.lost.is_set()
    with pytest.raises(LeaseLost):
        JobRecorder(settings, job_id, "me").set_fields(progress_step=3)


def test_sweeper_requeues_then_gives_up(settings):
    job_id = _queued_job(settings)
    for attempt in (1, 2):
        assert claim_job(settings, job_id, f"w{attempt}")
        _expire_lease(settings, job_id)
        assert sweep_once(settings) == [job_id]
        job = _job(settings, job_id)
        assert job.status == "queued" and job.lease_expiries == attempt
    assert claim_job(settings, job_id, "w3")
    _expire_lease(settings, job_id)
    assert sweep_once(settings) == []
    job = _job(settings, job_id)
    assert job.status == "failed" and "lost 3 times" in job.error
    with session_scope(settings.resolved_database_url) as session:
        levels = list(session.scalars(select(JobEvent.level).where(JobEvent.job_id == job_id)))
    assert levels.count("warn") == 2 and levels[-1] == "error"


def test_sweeper_leaves_live_leases_alone(settings):
    job_id = _queued_job(settings)
    assert claim_job(settings, job_id, "alive")
    assert sweep_once(settings) == []
    assert _job(settings, job_id).status == "running"


def test_stale_queued_job_is_re_enqueued_once_per_interval(settings):
    job_id = _queued_job(settings)
    with session_scope(settings.resolved_database_url) as session:
        old = utcnow() - timedelta(seconds=settings.requeue_after_seconds + 5)
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=old))
    assert sweep_once(settings) == [job_id]
    assert sweep_once(settings) == []


def test_resume_point_drops_what_came_after_the_checkpoint(settings, tmp_path: Path):
    from ml.distillation.recipe import MetricPoint

    job_id = _queued_job(settings)
    assert claim_job(settings, job_id, "me")
    recorder = JobRecorder(settings, job_id, "me")
    recorder.metrics([MetricPoint("train/loss", s, 1.0 / s) for s in range(1, 8)])
    for step in (2, 4, 6):
        ckpt = tmp_path / f"step_{step}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(bytes([step]) * 10)
        recorder.checkpoint(step, ckpt)
    (tmp_path / "step_6" / "model.safetensors").write_bytes(b"corrupt")  # newest one is damaged
    assert recorder.resume_point() == tmp_path / "step_4"
    with session_scope(settings.resolved_database_url) as session:
        steps = list(session.scalars(select(Metric.step).where(Metric.job_id == job_id)))
        warns = list(session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job_id, JobEvent.level == "warn")
        ))  # fmt: skip
    assert sorted(steps) == [1, 2, 3, 4]
    assert warns == ["checkpoint at step 6 is missing or corrupt; skipped"]
