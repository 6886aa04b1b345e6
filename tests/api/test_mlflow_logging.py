"""MLflow mirroring, on both databases: a job created over the API and run by the worker code
in-process (claim + run, as the Celery task does) logs its params, metrics and tags to a local
MLflow file store, read back with MLflow's own client and compared with our metrics rows; a
broken tracking URI records an event and the job still succeeds."""

from __future__ import annotations

import pytest

from api.config import get_settings
from workers.distill_run import run_claimed_job
from workers.mlflow_logging import flatten
from workers.runtime import claim_job

mlflow_tracking = pytest.importorskip("mlflow.tracking")


@pytest.fixture
def job_spec(api, auth, tiny_teacher, jsonl_file):
    with jsonl_file.open("rb") as fh:
        ds = api.client.post("/v1/datasets", headers=auth, files={"file": ("t.jsonl", fh)}).json()
    model = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)}).json()
    return {
        "kind": "distill",
        "name": "mirrored",
        "teacher": {"model": model["id"]},
        "dataset": {"train": ds["id"]},
        "method": {"loss": "fkl", "params": {"alpha_ce": 0.2}, "teacher_cache": "off"},
        "training": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 0, "max_length": 64},
        "evaluation": {"max_examples": 4, "max_new_tokens": 4},
    }


def _run_job(api, auth, spec, tracking_uri):
    job_id = api.client.post("/v1/jobs", headers=auth, json=spec).json()["id"]
    settings = get_settings().model_copy(update={"mlflow_tracking_uri": tracking_uri})
    assert claim_job(settings, job_id, "test-worker")
    run_claimed_job(settings, job_id, "test-worker")
    return api.client.get(f"/v1/jobs/{job_id}", headers=auth).json()


def test_params_metrics_and_tags_reach_mlflow(api, auth, job_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores opt-in
    uri = f"file://{tmp_path / 'mlruns'}"
    job = _run_job(api, auth, job_spec, uri)
    assert job["status"] == "succeeded", job["error"]
    run_id = job["result"]["mlflow"]["run_id"]

    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "mirrored"
    assert run.data.tags["distill.job_id"] == job["id"]
    assert run.data.tags["distill.project_id"].startswith("prj_")
    assert run.data.params == dict(flatten(job["spec"]))
    assert run.data.params["method.loss"] == "fkl" and run.data.params["training.max_steps"] == "4"

    rows = api.client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()["items"]
    ours: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        ours.setdefault(row["key"], []).append((row["step"], row["value"]))
    assert {"train/loss", "train/lr", "eval/loss"} <= set(ours)
    assert [step for step, _ in ours["train/loss"]] == [1, 2, 3, 4]
    for key, points in ours.items():
        history = client.get_metric_history(run_id, key)
        theirs = sorted((m.step, m.value) for m in history)
        assert [s for s, _ in theirs] == [s for s, _ in sorted(points)], key
        assert [v for _, v in theirs] == pytest.approx([v for _, v in sorted(points)]), key


def test_a_broken_mlflow_never_fails_the_job(api, auth, job_spec):
    job = _run_job(api, auth, job_spec, "bogus://nowhere")
    assert job["status"] == "succeeded", job["error"]
    assert "mlflow" not in job["result"]
    events = api.client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
    (warning,) = [e for e in events if "MLflow" in e["message"]]
    assert warning["level"] == "warn" and warning["message"].startswith("MLflow logging failed")
    assert "bogus" in warning["data"]["error"]
