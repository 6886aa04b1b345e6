"""The sweeper and paused jobs, on both databases: a paused job is never re-queued, and a job
whose worker died while pausing ends ``paused`` (its last checkpoint stays the resume point)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from api.projects.service import create as create_project
from models import Job, JobEvent, new_id, utcnow
from models.session import session_scope
from workers.runtime import LeaseKeeper, claim_job
from workers.sweeper import sweep_once


def _job(settings, status: str, **values) -> str:
    with session_scope(settings.resolved_database_url) as session:
        project, _ = create_project(session=session, name="p")
        job = Job(id=new_id("job"), project_id=project.id, kind="distill", status=status,
                  spec={}, resolved={}, **values)  # fmt: skip
        session.add(job)
        return job.id


def _row(settings, job_id) -> Job:
    with session_scope(settings.resolved_database_url) as session:
        return session.scalars(select(Job).where(Job.id == job_id)).one()


def test_a_paused_job_is_never_requeued(settings):
    long_ago = utcnow() - timedelta(days=1)
    job_id = _job(settings, "paused", enqueued_at=long_ago)
    assert job_id not in sweep_once(settings)
    assert _row(settings, job_id).status == "paused"
    assert claim_job(settings, job_id, "w-1") is False  # its old message is dropped


def test_a_worker_lost_while_pausing_leaves_the_job_paused(settings):
    job_id = _job(settings, "queued", enqueued_at=utcnow())
    assert claim_job(settings, job_id, "w-1")
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status="pausing", lease_expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip
    assert sweep_once(settings) == []
    job = _row(settings, job_id)
    assert job.status == "paused" and job.lease_owner is None and job.lease_expiries == 0
    with session_scope(settings.resolved_database_url) as session:
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert "worker lost while pausing; paused at its last checkpoint" in list(messages)


def test_the_lease_keeper_sees_a_pause_request(settings):
    job_id = _job(settings, "queued", enqueued_at=utcnow())
    assert claim_job(settings, job_id, "w-1")
    keeper = LeaseKeeper(settings, job_id, "w-1")
    keeper.renew()
    assert not keeper.should_stop()
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="pausing"))
    keeper.renew()  # the lease is still renewed while pausing
    assert keeper.pause_requested.is_set() and not keeper.lost.is_set() and keeper.should_stop()
