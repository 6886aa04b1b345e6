"""Pipeline controls through the API on both databases: dry run / validate (JSON and YAML),
pause and resume of queued jobs, queue position."""

from __future__ import annotations

import math

import pytest
import yaml
from sqlalchemy import func, select

from models import Job, JobEvent
from models.session import session_scope


@pytest.fixture
def refs(api, auth, tiny_teacher, jsonl_file):
    with jsonl_file.open("rb") as fh:
        ds = api.client.post("/v1/datasets", headers=auth, files={"file": ("t.jsonl", fh)}).json()
    model = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)}).json()
    return {"dataset": ds["id"], "teacher": model["id"]}


def _spec(refs, **overrides):
    spec = {
        "kind": "distill",
        "teacher": {"model": refs["teacher"]},
        "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
        "dataset": {"train": refs["dataset"]},
        "method": {"loss": "fkl"},
        "training": {"epochs": 2, "batch_size": 4, "grad_accum": 3, "max_length": 64},
    }
    spec.update(overrides)
    return spec


def _row_counts(url):
    with session_scope(url) as session:
        return (
            session.scalar(select(func.count()).select_from(Job)),
            session.scalar(select(func.count()).select_from(JobEvent)),
        )


def test_validate_reports_the_plan_and_writes_nothing(api, auth, refs, tiny_teacher):
    before = _row_counts(api.database_url)
    response = api.client.post("/v1/jobs/validate", headers=auth, json=_spec(refs))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["valid"] is True and report["problems"] == []
    assert report["method"]["loss"] == "fkl" and report["method"]["data_mode"] == "offline"
    teacher, student = report["models"]
    assert teacher["role"] == "teacher" and teacher["id"] == refs["teacher"]
    assert teacher["model_type"] == "llama" and teacher["num_layers"] == 2
    from ml.loading import load_causal_lm

    assert teacher["params"] == load_causal_lm(tiny_teacher).num_parameters()
    assert student["role"] == "student" and student["num_layers"] == 1
    assert 0 < student["params"] < teacher["params"]
    assert report["vocabulary"]["status"] == "same"
    # 400 rows, 40 held out (eval_fraction 0.1): 360 rows -> 90 micro-batches -> 30 steps/epoch.
    plan = report["plan"]
    assert plan["train_rows"] == 360 and plan["steps_per_epoch"] == 30
    assert plan["total_steps"] == 60 and plan["tokens_counted_on_rows"] == 400
    expected_tokens = 60 * 4 * 3 * plan["mean_tokens_per_example"]
    assert math.isclose(plan["total_tokens_approx"], expected_tokens, rel_tol=0.01)
    memory = report["memory"]
    assert memory["peak_bytes"] == sum(memory["parts_bytes"].values())
    assert memory["parts_bytes"]["adamw_states"] == 8 * student["params"]
    assert report["time"]["seconds"] > 0 and "assumed" in report["time"]["method"]
    assert _row_counts(api.database_url) == before  # no job, no event

    # Two FSDP processes: each holds half the student's state, one gathered layer more.
    sharded = _spec(refs, resources={"queue": "cpu", "nproc": 2, "strategy": "fsdp"})
    parts = api.client.post("/v1/jobs/validate", headers=auth, json=sharded).json()["memory"]
    assert parts["processes"] == 2 and parts["sharded"] is True
    assert parts["parts_bytes"]["adamw_states"] == 8 * student["params"] // 2
    layer = 4 * student["params"] // student["num_layers"]
    assert parts["parts_bytes"]["student_weights"] == 4 * student["params"] // 2 + layer
    assert parts["micro_batch"] == -(-memory["micro_batch"] // 2)


def test_dry_run_on_create_returns_the_report_and_creates_nothing(api, auth, refs):
    before = _row_counts(api.database_url)
    response = api.client.post("/v1/jobs", headers=auth, json=_spec(refs, dry_run=True))
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is True and response.json()["plan"]["total_steps"] == 60
    assert _row_counts(api.database_url) == before
    assert api.client.get("/v1/jobs", headers=auth).json()["items"] == []
    bad = api.client.post("/v1/jobs", headers=auth, json=_spec(refs, dry_run="yes"))
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "dry_run"]


def test_validate_lists_every_problem(api, auth, refs):
    spec = _spec(
        refs,
        teacher={"model": "mdl_missing"},
        dataset={"train": "ds_missing"},
        method={"loss": "nope", "data_mode": "sideways"},
        training={"batch_size": 0, "typo": 1},
    )
    before = _row_counts(api.database_url)
    report = api.client.post("/v1/jobs/validate", headers=auth, json=spec).json()
    assert report["valid"] is False
    locs = {tuple(p["loc"]) for p in report["problems"]}
    assert locs == {
        ("body", "method", "loss"),
        ("body", "method", "data_mode"),
        ("body", "training", "batch_size"),
        ("body", "training", "typo"),
        ("body", "teacher", "model"),
        ("body", "dataset", "train"),
    }
    assert all(p["msg"] for p in report["problems"])
    assert _row_counts(api.database_url) == before


def test_validate_reports_a_vocabulary_error(api, auth, refs, tiny_other_vocab_student):
    other = api.client.post(
        "/v1/models", headers=auth, json={"path": str(tiny_other_vocab_student)}
    ).json()
    spec = _spec(refs, student={"model": other["id"]})
    report = api.client.post("/v1/jobs/validate", headers=auth, json=spec).json()
    assert report["vocabulary"]["status"] == "error"
    assert [p["loc"] for p in report["problems"]] == [["body", "student", "model"]]
    spec["method"] = {"loss": "uld"}
    report = api.client.post("/v1/jobs/validate", headers=auth, json=spec).json()
    assert report["valid"] is True and report["vocabulary"]["status"] == "cross_vocab"


def test_yaml_bodies(api, auth, refs):
    headers = {**auth, "Content-Type": "application/yaml"}
    text = yaml.safe_dump(_spec(refs))
    report = api.client.post("/v1/jobs/validate", headers=headers, content=text).json()
    assert report["valid"] is True
    created = api.client.post("/v1/jobs", headers=headers, content=text)
    assert created.status_code == 201 and created.json()["status"] == "queued"
    broken = "kind: distill\nteacher:\n  model: [unclosed\ndataset: {train: x}\n"
    for path in ("/v1/jobs/validate", "/v1/jobs"):
        response = api.client.post(path, headers=headers, content=broken)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        (error,) = response.json()["errors"]
        assert error["loc"] == ["body"] and (error["line"], error["column"]) == (4, 8)
        assert "line 4, column 8" in response.json()["detail"]
    aliased = "kind: distill\nteacher: &t {model: x}\nstudent: *t\n"  # no alias expansion
    response = api.client.post("/v1/jobs/validate", headers=headers, content=aliased)
    assert response.status_code == 422 and response.json()["errors"][0]["line"] == 3
    assert "aliases" in response.json()["errors"][0]["msg"]
    not_utf8 = api.client.post("/v1/jobs/validate", headers=headers, content=b"kind: \xff")
    assert not_utf8.status_code == 422


def test_pause_and_resume_a_queued_job_and_its_queue_position(api, auth, refs):
    ids = [
        api.client.post("/v1/jobs", headers=auth, json=_spec(refs)).json()["id"] for _ in range(3)
    ]
    positions = [api.client.get(f"/v1/jobs/{i}", headers=auth).json()["queue_position"]
                 for i in ids]  # fmt: skip
    # Other tests' jobs may sit in the same queue (shared database): count relative places.
    assert positions[1] == positions[0] + 1 and positions[2] == positions[0] + 2

    paused = api.client.post(f"/v1/jobs/{ids[0]}/pause", headers=auth)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert paused.json()["queue_position"] is None
    assert api.client.get(f"/v1/jobs/{ids[1]}", headers=auth).json()["queue_position"] == (
        positions[1] - 1
    )
    again = api.client.post(f"/v1/jobs/{ids[0]}/pause", headers=auth)
    assert again.status_code == 200 and again.json()["status"] == "paused"  # no-op

    resumed = api.client.post(f"/v1/jobs/{ids[0]}/resume", headers=auth).json()
    assert resumed["status"] == "queued"
    assert resumed["queue_position"] == positions[2]  # at the back of the queue now
    listed = {j["id"]: j["queue_position"] for j in
              api.client.get("/v1/jobs", headers=auth).json()["items"]}  # fmt: skip
    assert listed[ids[0]] == positions[2] and listed[ids[1]] == positions[0]

    wrong = api.client.post(f"/v1/jobs/{ids[1]}/resume", headers=auth)
    assert wrong.status_code == 409
    assert wrong.headers["content-type"] == "application/problem+json"
    assert "not paused" in wrong.json()["detail"]

    api.client.post(f"/v1/jobs/{ids[2]}/pause", headers=auth)
    cancelled = api.client.post(f"/v1/jobs/{ids[2]}/cancel", headers=auth).json()
    assert cancelled["status"] == "cancelled"
    ended = api.client.post(f"/v1/jobs/{ids[2]}/pause", headers=auth)
    assert ended.status_code == 409 and ended.json()["title"] == "Job not pausable"
    events = api.client.get(f"/v1/jobs/{ids[0]}/events", headers=auth).json()["items"]
    assert [e["message"] for e in events] == [
        "job validated and queued",
        "paused while queued; resume re-queues it",
        "resumed; queued again",
    ]


def test_pause_and_resume_are_project_scoped(api, auth, refs):
    job_id = api.client.post("/v1/jobs", headers=auth, json=_spec(refs)).json()["id"]
    other = api.new_project("other")
    other.pop("project_id")
    assert api.client.post(f"/v1/jobs/{job_id}/pause", headers=other).status_code == 404
    assert api.client.post(f"/v1/jobs/{job_id}/resume", headers=other).status_code == 404
