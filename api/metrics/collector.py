"""A Prometheus collector that reads the database at scrape time.

Every value is computed from the tables when Prometheus asks, never kept in process-global
counters: several API processes behind a load balancer then all answer the same numbers, and a
restarted API loses nothing. Gauges only, for the same reason (a counter would need one process
to own it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session

from api.metrics import repository
from models import utcnow

# A worker is alive while its last heartbeat is within this many heartbeat intervals.
ALIVE_INTERVALS = 3
# The step time gauge averages each running job's newest steps, this many at most.
RECENT_STEPS = 20


class ServiceCollector:
    """The ``distill_*`` metrics. ``session`` is the request's (read only); ``queues`` are the
    Celery queue classes (``workers.celery_app.QUEUES``), ``statuses`` and ``kinds`` the job
    states and kinds reported even when no job has them (as 0), so a dashboard never sees a
    series vanish."""

    def __init__(
        self,
        session: Session,
        *,
        queues: Sequence[str],
        statuses: Sequence[str],
        kinds: Sequence[str],
        heartbeat_seconds: float,
        now: datetime | None = None,
    ) -> None:
        self.session = session
        self.queues, self.statuses, self.kinds = queues, statuses, kinds
        self.heartbeat_seconds = heartbeat_seconds
        self.now = now

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self.now or utcnow()
        yield self._jobs()
        yield from self._queues(now)
        yield self._step_time()
        yield from self._workers(now)

    def _jobs(self) -> GaugeMetricFamily:
        counts = repository.count_jobs_by_status_and_kind(self.session)
        statuses = _union(self.statuses, (s for s, _ in counts))
        kinds = _union(self.kinds, (k for _, k in counts))
        family = GaugeMetricFamily(
            "distill_jobs", "Jobs in each state, by kind (all projects).", labels=["state", "kind"]
        )
        for status in statuses:
            for kind in kinds:
                family.add_metric([status, kind], counts.get((status, kind), 0))
        return family

    def _queues(self, now: datetime) -> Iterable[GaugeMetricFamily]:
        waiting = {w.queue: w for w in repository.queued_jobs_by_queue(self.session)}
        busy = repository.jobs_holding_a_worker_by_queue(self.session)
        depth = GaugeMetricFamily(
            "distill_queue_depth", "Jobs in status queued, per queue class.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "distill_queue_oldest_age_seconds",
            "Seconds the longest-waiting queued job of the queue has waited since it was enqueued "
            "(created or resumed; 0 when none waits).",
            labels=["queue"],
        )
        running = GaugeMetricFamily(
            "distill_queue_running",
            "Jobs of the queue a worker is busy with (running, cancelling or pausing).",
            labels=["queue"],
        )
        for queue in _union(self.queues, [*waiting, *busy]):
            row = waiting.get(queue)
            depth.add_metric([queue], row.jobs if row else 0)
            age = (now - row.waiting_since).total_seconds() if row else 0.0
            oldest.add_metric([queue], max(age, 0.0))
            running.add_metric([queue], busy.get(queue, 0))
        yield depth
        yield oldest
        yield running

    def _step_time(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "distill_job_step_seconds",
            f"Mean seconds per optimizer step over the last {RECENT_STEPS} recorded steps of "
            "the running jobs of a queue (absent when none has recorded a step).",
            labels=["queue"],
        )
        for row in repository.recent_step_seconds(self.session, last_steps=RECENT_STEPS):
            family.add_metric([row.queue], row.mean_seconds)
        return family

    def _workers(self, now: datetime) -> Iterable[GaugeMetricFamily]:
        rows = repository.worker_heartbeats(self.session)
        alive_within = timedelta(seconds=ALIVE_INTERVALS * self.heartbeat_seconds)
        alive = [r for r in rows if now - r.last_seen_at <= alive_within]
        workers = GaugeMetricFamily(
            "distill_workers",
            f"Worker processes: alive (a heartbeat within {ALIVE_INTERVALS} intervals) or lost.",
            labels=["state"],
        )
        workers.add_metric(["alive"], len(alive))
        workers.add_metric(["lost"], len(rows) - len(alive))
        yield workers
        per_queue = GaugeMetricFamily(
            "distill_queue_workers", "Alive workers consuming each queue.", labels=["queue"]
        )
        consumed = [q for r in alive for q in r.queues]
        for queue in _union(self.queues, consumed):
            per_queue.add_metric([queue], sum(queue in r.queues for r in alive))
        yield per_queue
        last = GaugeMetricFamily(
            "distill_worker_last_heartbeat_seconds",
            "Seconds since each known worker's last heartbeat.",
            labels=["worker", "hostname", "queues"],
        )
        for row in rows:
            age = max((now - row.last_seen_at).total_seconds(), 0.0)
            last.add_metric([row.worker_id, row.hostname, ",".join(row.queues)], age)
        yield last


def _union(known: Iterable[str], seen: Iterable[str]) -> list[str]:
    """``known`` in order, then anything else ``seen`` (a state or queue added later must not
    disappear from the metrics just because this list was not updated)."""
    out = list(dict.fromkeys(known))
    out += sorted(set(seen) - set(out))
    return out
