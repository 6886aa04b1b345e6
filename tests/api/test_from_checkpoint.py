"""``student.model.from_checkpoint`` on both databases: the API resolves and verifies another
job's checkpoint (same project only), the worker code (claim + run, in-process) starts the
new student from those weights, and its first loss sits near the source's last loss, far from
a fresh student's on the very same batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.config import get_settings
from ml.distillation.checkpointing import directory_sha256
from workers import runtime
from workers.distill_run import run_claimed_job
from workers.runtime import claim_job

LOC = ["body", "student", "model", "from_checkpoint"]


@pytest.fixture
def refs(api, auth, tiny_teacher, jsonl_file):
    with jsonl_file.open("rb") as fh:
        ds = api.client.post("/v1/datasets", headers=auth, files={"file": ("t.jsonl", fh)}).json()
    model = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)}).json()
    return {"dataset": ds["id"], "teacher": model["id"]}


def _spec(refs, student, max_steps, checkpoint_every=0):
    return {
        "kind": "distill",
        "teacher": {"model": refs["teacher"]},
        "student": {"model": student},
        "dataset": {"train": refs["dataset"]},
        "method": {"loss": "fkl", "teacher_cache": "off"},
        "training": {"max_steps": max_steps, "batch_size": 8, "lr": 1e-3, "max_length": 64,
                     "checkpoint_every": checkpoint_every, "warmup_steps": 0},
        "evaluation": {"max_examples": 4, "max_new_tokens": 4},
    }  # fmt: skip


def _run(api, auth, spec):
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    settings = get_settings()
    assert claim_job(settings, job_id, "test-worker")
    run_claimed_job(settings, job_id, "test-worker")
    job = api.client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    losses = api.client.get(f"/v1/jobs/{job_id}/metrics", headers=auth,
                            params={"key": "train/loss"}).json()["items"]  # fmt: skip
    return job, [m["value"] for m in losses]


def test_a_job_starts_from_another_jobs_checkpoint(api, auth, refs):
    init = {"init": {"from_teacher_layers": "every_2nd"}}
    source, source_losses = _run(api, auth, _spec(refs, init, 12, checkpoint_every=4))
    fresh_first, source_last = source_losses[0], source_losses[-1]
    assert source_last < 0.5 * fresh_first  # the source learned something worth starting from

    start = {"from_checkpoint": {"job": source["id"], "step": "latest"}}
    report = api.client.post("/v1/jobs/validate", headers=auth,
                             json=_spec(refs, start, 2)).json()  # fmt: skip
    assert report["valid"] is True, report["problems"]
    (student,) = [m for m in report["models"] if m["role"] == "student"]
    assert student["from_checkpoint"]["step"] == 12 and student["num_layers"] == 1

    job, losses = _run(api, auth, _spec(refs, start, 2))
    # Same seed, so the first batch is the source's first batch: only the weights differ.
    assert abs(losses[0] - source_last) < 0.5 * (fresh_first - source_last), (
        losses[0], source_last, fresh_first)  # fmt: skip
    lineage = api.client.get(f"/v1/models/{job['output_model_id']}", headers=auth).json()
    assert lineage["lineage"]["student_init"]["job_id"] == source["id"]
    assert lineage["lineage"]["student_init"]["step"] == 12

    # An explicit step, and a chain (a job started from a job started from a checkpoint).
    job8, _ = _run(api, auth, _spec(refs, {"from_checkpoint": {"job": source["id"], "step": 8}},
                                    1, checkpoint_every=1))  # fmt: skip
    chained = {"from_checkpoint": {"job": job8["id"]}}
    report = api.client.post("/v1/jobs/validate", headers=auth,
                             json=_spec(refs, chained, 1)).json()  # fmt: skip
    assert report["valid"] is True, report["problems"]


def test_from_checkpoint_problems_name_the_field(api, auth, refs):
    init = {"init": {"from_teacher_layers": "every_2nd"}}
    source, _ = _run(api, auth, _spec(refs, init, 4, checkpoint_every=2))

    def problem(student):
        response = api.client.post("/v1/jobs", headers=auth, json=_spec(refs, student, 1))
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        return error["loc"], error["msg"]

    loc, msg = problem({"from_checkpoint": {"job": "job_missing"}})
    assert loc == [*LOC, "job"] and "no distill job" in msg
    loc, msg = problem({"from_checkpoint": {"job": source["id"], "step": 3}})
    assert loc == [*LOC, "step"] and "it has 2, 4" in msg
    negative = _spec(refs, {"from_checkpoint": {"job": source["id"], "step": -1}}, 1)
    report = api.client.post("/v1/jobs/validate", headers=auth, json=negative).json()
    assert any("step" in p["loc"] for p in report["problems"]), report["problems"]

    other = api.new_project("elsewhere")
    other.pop("project_id")
    foreign = _spec(refs, {"from_checkpoint": {"job": source["id"]}}, 1)
    response = api.client.post("/v1/jobs/validate", headers=other, json=foreign)
    assert [*LOC, "job"] in [p["loc"] for p in response.json()["problems"]]

    checkpoints = api.client.get(f"/v1/jobs/{source['id']}/checkpoints", headers=auth).json()
    newest = Path(_checkpoint_path(api, checkpoints["items"][-1]["id"]))
    worker_hash = getattr(runtime, "hash_tree", None) or runtime._hash_tree
    assert directory_sha256(newest) == worker_hash(newest)  # one hash for worker and API
    with (newest / "trainer_state.json").open("a") as fh:
        fh.write(" ")
    loc, msg = problem({"from_checkpoint": {"job": source["id"]}})
    assert loc == [*LOC, "step"] and "sha256" in msg


def _checkpoint_path(api, checkpoint_id):
    from sqlalchemy import select

    from models import Checkpoint
    from models.session import session_scope

    with session_scope(api.database_url) as session:
        return session.scalar(select(Checkpoint.path).where(Checkpoint.id == checkpoint_id))
