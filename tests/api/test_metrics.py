"""GET /metrics on SQLite and PostgreSQL: every gauge read from the database at scrape time and
parsed back with prometheus_client's own parser; exact counts per state, kind and queue; the
queue age, the step time derived from recorded steps, live and lost workers; the optional
bearer token; and the endpoint kept out of the OpenAPI document.

Each test gets a database of its own: /metrics counts every project's jobs, so a database shared
with other tests could not give exact numbers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.jobs.spec import JOB_KINDS
from api.webhooks.outbox import JOB_STATUSES
from models import Job, Metric, new_id, utcnow
from models.session import session_scope
from models.tables import WorkerHeartbeat
from tests.api.conftest import ApiHarness, _harness
from tests.support.servers import fresh_postgres_database, require_real_stack
from workers.celery_app import QUEUES

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(params=["sqlite", "postgres"])
def own_db(request, monkeypatch, tmp_path) -> Iterator[ApiHarness]:
    """The API test client on a fresh, empty database."""
    monkeypatch.delenv("DISTILL_METRICS_TOKEN", raising=False)
    if request.param == "sqlite":
        yield from _harness(f"sqlite:///{tmp_path / 'metrics.db'}", monkeypatch)
        return
    require_real_stack()
    with fresh_postgres_database() as url:
        yield from _harness(url, monkeypatch)


def scrape(api: ApiHarness, **headers: str) -> Samples:
    response = api.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def of(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def key(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def add_job(session, project_id: str, *, status: str, kind: str = "distill", queue: str = "cpu",
            age_s: float = 0.0, enqueued_s: float | None = None) -> str:  # fmt: skip
    job_id = new_id("job")
    enqueued = None if enqueued_s is None else utcnow() - timedelta(seconds=enqueued_s)
    session.add(Job(id=job_id, project_id=project_id, kind=kind, status=status, spec={},
                    queue=queue, created_at=utcnow() - timedelta(seconds=age_s),
                    enqueued_at=enqueued))  # fmt: skip
    session.flush()
    return job_id


def add_steps(session, job_id: str, seconds: list[float], tokens: float = 256.0) -> None:
    """Steps 1..n as the recipe records them: tokens, and tokens per second of that step."""
    for step, s in enumerate(seconds, start=1):
        session.add(Metric(job_id=job_id, key="train/tokens", step=step, value=tokens))
        session.add(Metric(job_id=job_id, key="train/tokens_per_s", step=step, value=tokens / s))


def test_jobs_queues_and_step_time_are_counted_exactly(own_db):
    project = own_db.new_project("metrics")["project_id"]
    with session_scope(own_db.database_url) as session:
        for age in (30, 100, 60):
            add_job(session, project, status="queued", queue="cpu", age_s=age)
        add_job(session, project, status="queued", queue="gpu", kind="edit", age_s=50)
        # Created long ago, resumed (enqueued again) 20 s ago: waits since the resume.
        add_job(session, project, status="queued", queue="gpu", age_s=900, enqueued_s=20)
        # A queue no list names still shows up, not silently dropped.
        add_job(session, project, status="queued", queue="special-class", age_s=5)
        long_run = add_job(session, project, status="running", queue="cpu")
        add_steps(session, long_run, [0.5] * 5 + [0.2] * 20)  # only the last 20 count
        short_run = add_job(session, project, status="running", queue="cpu")
        add_steps(session, short_run, [1.0, 1.0, 1.0])
        add_job(session, project, status="running", queue="gpu")  # no step recorded yet
        finished = add_job(session, project, status="succeeded", kind="edit")
        add_steps(session, finished, [9.0] * 3)  # not running: ignored
        add_job(session, project, status="failed", kind="inject")
        add_job(session, project, status="failed", kind="inject")
        add_job(session, project, status="paused")
        add_job(session, project, status="cancelling", queue="gpu-big")  # holds a worker

    samples = scrape(own_db)

    expected_jobs = {key(state=s, kind=k): 0.0 for s in JOB_STATUSES for k in JOB_KINDS}
    expected_jobs |= {
        key(state="queued", kind="distill"): 5.0,
        key(state="queued", kind="edit"): 1.0,
        key(state="running", kind="distill"): 3.0,
        key(state="succeeded", kind="edit"): 1.0,
        key(state="failed", kind="inject"): 2.0,
        key(state="paused", kind="distill"): 1.0,
        key(state="cancelling", kind="distill"): 1.0,
    }
    assert of(samples, "distill_jobs") == expected_jobs

    expected_depth = {key(queue=q): 0.0 for q in QUEUES}
    expected_depth |= {key(queue="cpu"): 3.0, key(queue="gpu"): 2.0,
                       key(queue="special-class"): 1.0, key(queue="gpu-big"): 0.0}  # fmt: skip
    assert of(samples, "distill_queue_depth") == expected_depth
    expected_running = {labels: 0.0 for labels in expected_depth}
    expected_running |= {key(queue="cpu"): 2.0, key(queue="gpu"): 1.0, key(queue="gpu-big"): 1.0}
    assert of(samples, "distill_queue_running") == expected_running

    ages = of(samples, "distill_queue_oldest_age_seconds")
    assert set(ages) == set(expected_depth)
    assert 100 <= ages[key(queue="cpu")] < 130  # the oldest of three, not the newest
    assert 50 <= ages[key(queue="gpu")] < 80
    assert all(ages[key(queue=q)] == 0.0 for q in QUEUES if q not in ("cpu", "gpu"))

    # cpu: 20 steps of 0.2 s from the long job, 3 of 1.0 s from the short one.
    step = of(samples, "distill_job_step_seconds")
    assert set(step) == {key(queue="cpu")}
    assert step[key(queue="cpu")] == pytest.approx((20 * 0.2 + 3 * 1.0) / 23)


def test_workers_alive_and_lost_by_heartbeat_age(own_db):
    from api.config import get_settings

    interval = get_settings().heartbeat_seconds
    now = utcnow()
    with session_scope(own_db.database_url) as session:
        for worker_id, queues, age in (
            ("host-a:1:aaaaaa", ["cpu"], 0.0),
            ("host-a:2:bbbbbb", ["cpu", "gpu"], 2.5 * interval),  # within three intervals
            ("host-b:3:cccccc", ["gpu"], 3.5 * interval),  # lost
        ):
            seen = now - timedelta(seconds=age)
            session.add(WorkerHeartbeat(worker_id=worker_id, hostname=worker_id.split(":")[0],
                                        pid=1, queues=queues, started_at=seen,
                                        last_seen_at=seen))  # fmt: skip

    samples = scrape(own_db)

    assert of(samples, "distill_workers") == {key(state="alive"): 2.0, key(state="lost"): 1.0}
    per_queue = of(samples, "distill_queue_workers")
    assert per_queue[key(queue="cpu")] == 2.0 and per_queue[key(queue="gpu")] == 1.0
    last = of(samples, "distill_worker_last_heartbeat_seconds")
    assert set(last) == {
        key(worker="host-a:1:aaaaaa", hostname="host-a", queues="cpu"),
        key(worker="host-a:2:bbbbbb", hostname="host-a", queues="cpu,gpu"),
        key(worker="host-b:3:cccccc", hostname="host-b", queues="gpu"),
    }
    lost = last[key(worker="host-b:3:cccccc", hostname="host-b", queues="gpu")]
    assert 3.5 * interval <= lost < 3.5 * interval + 30


def test_empty_database_reports_every_series_as_zero(own_db):
    samples = scrape(own_db)
    assert set(of(samples, "distill_jobs").values()) == {0.0}
    assert len(of(samples, "distill_jobs")) == len(JOB_STATUSES) * len(JOB_KINDS)
    assert of(samples, "distill_queue_depth") == {key(queue=q): 0.0 for q in QUEUES}
    assert of(samples, "distill_workers") == {key(state="alive"): 0.0, key(state="lost"): 0.0}
    assert of(samples, "distill_job_step_seconds") == {}


def test_token_when_set_is_required(own_db, monkeypatch):
    from api.config import get_settings

    monkeypatch.setenv("DISTILL_METRICS_TOKEN", "s3cret-scrape-token")
    get_settings.cache_clear()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-scrape-token"},
                    {"Authorization": "Bearer s3cret-scrape-tokén".encode("latin-1")}):  # fmt: skip
        response = own_db.client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert "DISTILL_METRICS_TOKEN" in response.json()["detail"]
    samples = scrape(own_db, Authorization="Bearer s3cret-scrape-token")
    assert ("distill_workers", key(state="alive")) in samples
    # A project's API key is not the metrics token.
    project_key = own_db.new_project()["Authorization"]
    assert own_db.client.get("/metrics", headers={"Authorization": project_key}).status_code == 401


def test_open_without_token_and_absent_from_openapi(own_db):
    assert own_db.client.get("/metrics").status_code == 200
    document = own_db.client.get("/v1/openapi.json").json()
    assert "/metrics" not in document["paths"]
    assert all("metrics" not in path or "/jobs/" in path for path in document["paths"])


def test_openmetrics_when_the_scraper_asks(own_db):
    response = own_db.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
