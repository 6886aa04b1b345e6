"""Mirrors a job to an MLflow run when ``DISTILL_MLFLOW_TRACKING_URI`` is set: the flattened spec
as params, every metric point with its step, tags naming the job and project, and the run's end
status. The database stays the record; MLflow is a copy for teams that read runs there.

MLflow must never fail a job: every call is guarded, and the first failure records a ``warn``
event on the job and turns the mirror off for the rest of the attempt. A resumed job (after a
pause or a lost worker) logs into the same run, whose id is kept in ``job.result["mlflow"]``.
``mlflow`` (the ``mlflow-skinny`` distribution, the ``mlflow`` extra) is imported only when a
tracking URI is set."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from api.config import Settings
from models import Job

log = logging.getLogger(__name__)
EventSink = Callable[[str, str, dict[str, Any]], None]
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch
METRICS_PER_BATCH = 1000
END_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``{"method": {"loss": "fkl"}}`` -> ``("method.loss", "fkl")``; list items by index."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{index}")
    else:
        yield prefix, str(value)[:MAX_PARAM_CHARS]


class MlflowMirror:
    """One job's MLflow run. ``start`` creates (or reopens) it; the other methods are no-ops
    once it is off (no URI, or a failure)."""

    def __init__(self, settings: Settings, job: Job, event: EventSink) -> None:
        self.uri = settings.mlflow_tracking_uri
        self.job, self._event = job, event
        self.client: Any = None
        self.run_id: str | None = None

    @property
    def on(self) -> bool:
        return self.run_id is not None

    def start(self) -> dict[str, str] | None:
        """Open the run; returns ``{"run_id", "experiment_id"}`` to keep in the job's result."""
        if not self.uri:
            return None
        try:
            return self._start()
        except Exception as exc:
            self._fail("start", exc)
            return None

    def _start(self) -> dict[str, str]:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        known = (self.job.result or {}).get("mlflow") or {}
        if known.get("run_id"):
            self.run_id = str(known["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            return dict(known)
        name = f"distill/{self.job.project_id}"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        tags = {"distill.job_id": self.job.id, "distill.project_id": self.job.project_id,
                "distill.kind": self.job.kind}  # fmt: skip
        run = self.client.create_run(
            experiment_id, tags=tags, run_name=self.job.name or self.job.id
        )
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(self.job.spec)]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])
        return {"run_id": self.run_id, "experiment_id": str(experiment_id)}

    def log_metrics(self, points: list[Any]) -> None:
        if not self.on or not points:
            return
        try:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            rows = [Metric(p.key, float(p.value), now, int(p.step)) for p in points]
            for i in range(0, len(rows), METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=rows[i : i + METRICS_PER_BATCH])
        except Exception as exc:
            self._fail("metrics", exc)

    def end(self, job_status: str) -> None:
        """Terminate the run for a finished job; a paused or re-queued job keeps it open."""
        if not self.on or job_status not in END_STATUS:
            return
        try:
            self.client.set_terminated(self.run_id, status=END_STATUS[job_status])
        except Exception as exc:
            self._fail("end", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        log.warning("MLflow %s failed for %s: %s", what, self.job.id, exc)
        self.run_id = None
        message = f"MLflow logging failed ({what}); it is off for this attempt, the job goes on"
        try:
            self._event("warn", message, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        except Exception:  # the event is best effort too: nothing here may fail the job
            log.exception("could not record the MLflow failure of %s", self.job.id)
