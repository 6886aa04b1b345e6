"""Fair-share claims (workers/scheduling.py) on SQLite and PostgreSQL, with no broker: a
"worker slot" here is a claim followed by finishing the job, exactly what a worker does between
messages. Wake-ups go to the unread test broker."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select, update

from api.config import Settings
from api.projects.service import create as create_project
from models import Job, JobEvent, new_id, utcnow
from models.session import session_scope
from workers.runtime import claim_job
from workers.scheduling import claim_for_message, wake_project_queues
from workers.sweeper import sweep_once


def _project(settings: Settings, name: str, limit: int | None = None) -> str:
    with session_scope(settings.resolved_database_url) as session:
        project, _ = create_project(session=session, name=name, max_running_jobs=limit)
        return project.id


def _submit(settings: Settings, project_id: str, *, priority: int = 5, queue: str = "cpu",
            nproc: int = 1, at_seconds: float = 0.0) -> str:  # fmt: skip
    """A queued job as the API stores it; ``at_seconds`` orders enqueued_at."""
    enqueued = utcnow() - timedelta(hours=1) + timedelta(seconds=at_seconds)
    with session_scope(settings.resolved_database_url) as session:
        job = Job(id=new_id("job"), project_id=project_id, kind="distill", status="queued",
                  spec={}, resolved={}, queue=queue, priority=priority, nproc=nproc,
                  enqueued_at=enqueued)  # fmt: skip
        session.add(job)
        return job.id


def _finish(settings: Settings, job_id: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(Job).where(Job.id == job_id)
            .values(status="succeeded", lease_owner=None, finished_at=utcnow())
        )  # fmt: skip


def _status(settings: Settings, job_id: str) -> str:
    with session_scope(settings.resolved_database_url) as session:
        return session.scalars(select(Job.status).where(Job.id == job_id)).one()


def _events(settings: Settings, job_id: str) -> list[str]:
    with session_scope(settings.resolved_database_url) as session:
        rows = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        )
        return list(rows)


def _one_slot_run_order(settings: Settings, messages: list[str]) -> list[str]:
    """One worker slot: each message wakes it, it claims, runs (finishes) the job, repeat."""
    order = []
    for woken in messages:
        claimed = claim_for_message(settings, woken, "slot-1")
        if claimed is not None:
            order.append(claimed)
            _finish(settings, claimed)
    return order


def test_a_flood_does_not_starve_a_second_project(settings):
    limited = settings.model_copy(update={"project_max_running_jobs": 1})
    a, b = _project(limited, "a"), _project(limited, "b")
    a_jobs = [_submit(limited, a, at_seconds=i) for i in range(6)]
    b_job = _submit(limited, b, at_seconds=10)
    # Messages arrive in submission order (the broker is FIFO): B's is the last of seven.
    order = _one_slot_run_order(limited, [*a_jobs, b_job])
    assert order == [a_jobs[0], b_job, *a_jobs[1:]]
    # A's second message started B's job: A's second job waited, and its events say why.
    assert any("started " + b_job in m for m in _events(limited, a_jobs[1]))
    assert all(_status(limited, j) == "succeeded" for j in [*a_jobs, b_job])


def test_with_two_slots_the_second_goes_to_the_project_under_its_limit(settings):
    limited = settings.model_copy(update={"project_max_running_jobs": 1})
    a, b = _project(limited, "a"), _project(limited, "b")
    a_jobs = [_submit(limited, a, at_seconds=i) for i in range(6)]
    b_job = _submit(limited, b, at_seconds=10)
    assert claim_for_message(limited, a_jobs[0], "slot-1") == a_jobs[0]
    assert claim_for_message(limited, a_jobs[1], "slot-2") == b_job  # A is at its limit of 1
    # Both projects at their limits: the third message starts nothing and says why.
    assert claim_for_message(limited, a_jobs[2], "slot-3") is None
    assert "its project runs 1 of at most 1 jobs" in _events(limited, a_jobs[2])[-1]
    assert [_status(limited, j) for j in a_jobs[1:]] == ["queued"] * 5


def test_priority_orders_a_projects_own_jobs(settings):
    a = _project(settings, "a")
    low = _submit(settings, a, priority=1, at_seconds=0)
    normal = _submit(settings, a, priority=5, at_seconds=1)
    high = _submit(settings, a, priority=9, at_seconds=2)
    normal_later = _submit(settings, a, priority=5, at_seconds=3)
    order = _one_slot_run_order(settings, [low, normal, high, normal_later])
    assert order == [high, normal, normal_later, low]


def test_priority_does_not_jump_another_projects_turn(settings):
    limited = settings.model_copy(update={"project_max_running_jobs": 1})
    a, b = _project(limited, "a"), _project(limited, "b")
    a_jobs = [_submit(limited, a, priority=9, at_seconds=i) for i in range(3)]
    b_job = _submit(limited, b, priority=0, at_seconds=10)
    order = _one_slot_run_order(limited, [*a_jobs, b_job])
    assert order == [a_jobs[0], b_job, a_jobs[1], a_jobs[2]]


def test_the_projects_own_limit_overrides_the_default(settings):
    a = _project(settings, "a", limit=3)  # the default is 2
    jobs = [_submit(settings, a, at_seconds=i) for i in range(5)]
    started = [claim_for_message(settings, j, f"slot-{i}") for i, j in enumerate(jobs)]
    assert started == [*jobs[:3], None, None]


def test_concurrent_claims_never_exceed_a_projects_limit(settings):
    """Eight workers woken at once, two projects with limit 2 and eight jobs each: exactly two
    jobs of each project start, and no job twice (the project row lock and SKIP LOCKED)."""
    a, b = _project(settings, "a"), _project(settings, "b")
    jobs = [_submit(settings, p, at_seconds=i) for i in range(8) for p in (a, b)]
    barrier = threading.Barrier(8)
    results: list[str | None] = []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(claim_for_message(settings, jobs[i], f"w-{i}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r for r in results if r is not None]
    assert len(started) == len(set(started)) == 4
    with session_scope(settings.resolved_database_url) as session:
        running = list(session.execute(select(Job.project_id, Job.lease_owner)
                                       .where(Job.status == "running")))  # fmt: skip
    assert sorted(p for p, _ in running) == sorted([a, a, b, b])
    assert len({owner for _, owner in running}) == 4


def test_claim_job_does_not_start_a_job_whose_project_is_at_its_limit(settings):
    a = _project(settings, "a", limit=1)
    first, second = _submit(settings, a), _submit(settings, a, at_seconds=1)
    assert claim_job(settings, first, "w-1")
    assert claim_job(settings, second, "w-2") is False
    assert _status(settings, second) == "queued"
    assert (
        _events(settings, second)[-1] == "not started by w-2: its project runs 1 of at most 1 jobs"
    )
    _finish(settings, first)
    assert claim_job(settings, second, "w-2")


def test_a_cpu_worker_never_takes_a_gpu_multi_job(settings):
    a = _project(settings, "a")
    multi = _submit(settings, a, queue="gpu-multi", nproc=2)
    cpu_job = _submit(settings, a, queue="cpu", at_seconds=1)
    # A message from the cpu queue claims within the cpu queue only.
    assert claim_for_message(settings, cpu_job, "cpu-worker") == cpu_job
    assert _status(settings, multi) == "queued"
    # A gpu-multi worker offering one process cannot run it; one offering two can.
    small = settings.model_copy(update={"worker_max_nproc": 1})
    assert claim_for_message(small, multi, "small-gpu") is None
    assert _events(settings, multi)[-1].endswith("it needs nproc 2; this worker offers 1")
    big = settings.model_copy(update={"worker_max_nproc": 2})
    assert claim_for_message(big, multi, "big-gpu") == multi


def test_a_redelivered_message_never_runs_a_job_twice(settings):
    a = _project(settings, "a")
    job = _submit(settings, a)
    assert claim_for_message(settings, job, "w-1") == job
    assert claim_for_message(settings, job, "w-2") is None  # the duplicate finds nothing
    assert _events(settings, job)[-1] == "message dropped by w-2: the job is running"
    claims = [m for m in _events(settings, job) if m.startswith("claimed by")]
    assert claims == ["claimed by w-1 (attempt 1)"]


def test_a_paused_or_cancelled_job_is_never_claimed(settings):
    a = _project(settings, "a")
    paused, cancelled = _submit(settings, a), _submit(settings, a, at_seconds=1)
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(Job).where(Job.id == paused).values(status="paused"))
        session.execute(update(Job).where(Job.id == cancelled).values(status="cancelled"))
    assert claim_for_message(settings, paused, "w-1") is None
    assert claim_for_message(settings, cancelled, "w-1") is None
    assert (_status(settings, paused), _status(settings, cancelled)) == ("paused", "cancelled")


def test_sweeper_resends_only_runnable_jobs_and_keeps_their_place(settings):
    limited = settings.model_copy(update={"project_max_running_jobs": 1})
    a, b = _project(limited, "a"), _project(limited, "b")
    running, waiting = _submit(limited, a), _submit(limited, a, at_seconds=1)
    runnable = _submit(limited, b, at_seconds=2)
    assert claim_job(limited, running, "w-1")
    with session_scope(limited.resolved_database_url) as session:
        before = session.scalars(select(Job.enqueued_at).where(Job.id == runnable)).one()
    # Both queued an hour ago: only B's is re-sent; A's waits for A's slot (a wake-up then).
    assert sweep_once(limited) == [runnable]
    assert sweep_once(limited) == []  # once per interval
    with session_scope(limited.resolved_database_url) as session:
        job = session.scalars(select(Job).where(Job.id == runnable)).one()
        assert job.enqueued_at == before and job.last_sent_at is not None
    _finish(limited, running)
    assert wake_project_queues(limited, a) == [waiting]


def test_wake_up_names_the_best_job_of_each_queue(settings):
    a = _project(settings, "a")
    _submit(settings, a, queue="cpu", priority=1)
    best_cpu = _submit(settings, a, queue="cpu", priority=7, at_seconds=1)
    gpu = _submit(settings, a, queue="gpu", at_seconds=2)
    assert sorted(wake_project_queues(settings, a)) == sorted([best_cpu, gpu])


def test_a_resumed_job_is_not_re_sent_at_once(settings):
    """Resume gives a job a new enqueued_at; an old last_sent_at must not make it look stale."""
    a = _project(settings, "a")
    job = _submit(settings, a)
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(Job).where(Job.id == job).values(last_sent_at=long_ago, enqueued_at=utcnow())
        )
    assert sweep_once(settings) == []
