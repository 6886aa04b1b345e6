"""``teacher.remote`` in a distill spec: accepted with an allowed host and a student model, and
each way it can be wrong answered with a 422 naming the field (nothing is created)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import Job
from models.session import session_scope
from tests.support.remote_teacher import build_student

REMOTE = {"url": "http://127.0.0.1:8100", "top_k": 8}


@pytest.fixture
def refs(api, auth, tiny_teacher, model_root, jsonl_file, monkeypatch):
    from api.config import get_settings

    monkeypatch.setenv("DISTILL_REMOTE_TEACHER_ALLOWED_HOSTS", "127.0.0.1, teacher.internal")
    get_settings.cache_clear()
    student = build_student(tiny_teacher, model_root / "tiny-remote-student")
    with jsonl_file.open("rb") as fh:
        ds = api.client.post("/v1/datasets", headers=auth, files={"file": ("t.jsonl", fh)}).json()
    model = api.client.post("/v1/models", headers=auth, json={"path": str(student)}).json()
    yield {"dataset": ds["id"], "student": model["id"]}
    get_settings.cache_clear()


def _spec(refs, remote=None, **overrides):
    spec = {
        "kind": "distill",
        "teacher": {"remote": {**REMOTE, **(remote or {})}},
        "student": {"model": refs["student"]},
        "dataset": {"train": refs["dataset"]},
        "method": {"loss": "fkl", "params": {"temperature": 2.0}},
        "training": {"max_steps": 5, "batch_size": 4},
    }
    spec.update(overrides)
    return spec


def test_a_remote_teacher_is_resolved_with_the_student(api, auth, refs):
    spec = _spec(refs, {"protocol": "openai", "model": "big", "api_key_env": "TEACHER_KEY"})
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 201, response.text
    with session_scope(api.database_url) as session:
        row = session.scalars(select(Job).where(Job.id == response.json()["id"])).one()
        teacher, student = row.resolved["teacher"], row.resolved["student"]
    assert teacher["remote"]["url"] == REMOTE["url"] and teacher["remote"]["model"] == "big"
    assert teacher["remote"]["api_key_env"] == "TEACHER_KEY" and "path" not in teacher
    assert student["id"] == refs["student"] and student["vocab_size"] > 0


OPD = {"loss": "rkl", "data_mode": "opd"}


@pytest.mark.parametrize(
    "remote, patch, loc, text",
    [
        ({"url": "http://evil.example:80"}, {}, ["body", "teacher", "remote", "url"],
         "DISTILL_REMOTE_TEACHER_ALLOWED_HOSTS"),
        ({"url": "ftp://127.0.0.1/x"}, {}, ["body", "teacher", "remote", "url"], "http"),
        ({"url": "http://u:p@127.0.0.1"}, {}, ["body", "teacher", "remote", "url"], "api_key_env"),
        ({"protocol": "openai"}, {}, ["body", "teacher", "remote"], "model"),
        ({"api_key_env": "sk-123"}, {}, ["body", "teacher", "remote", "api_key_env"], "pattern"),
        ({"top_k": 0}, {}, ["body", "teacher", "remote", "top_k"], "greater than"),
        ({}, {"method": {"loss": "dskd"}}, ["body", "method", "loss"], "remote teacher"),
        ({}, {"method": {"loss": "jsd"}}, ["body", "method", "loss"], "'fkl'"),
        ({}, {"method": {"loss": "fkl", "data_mode": "seqkd"}}, ["body", "method", "data_mode"],
         "offline or onpolicy"),
        ({}, {"method": {"loss": "fkl", "data_mode": "skd"}}, ["body", "method", "data_mode"],
         "offline or onpolicy"),
        ({}, {"method": {"teacher_cache": {"mode": "sampled"}}},
         ["body", "method", "teacher_cache", "mode"], "top-k capture"),
        ({}, {"method": {"teacher_cache": {"mode": "topk", "k": 9}}},
         ["body", "method", "teacher_cache", "k"], "exceeds"),
        ({}, {"student": {"model": {"init": {"from_teacher_layers": 2}}}},
         ["body", "student", "model"], "must be a model"),
        ({}, {"training": {"kd_chunk_tokens": 64}}, ["body", "training", "kd_chunk_tokens"], ""),
        ({}, {"method": OPD, "resources": {"queue": "cpu", "nproc": 2}}, ["body"],
         "a remote teacher trains in one process"),  # api/jobs/spec.py checks it
    ],
)  # fmt: skip
def test_bad_remote_specs_name_the_field(api, auth, refs, remote, patch, loc, text):
    response = api.client.post("/v1/jobs", headers=auth, json=_spec(refs, remote, **patch))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    error = response.json()["errors"][0]
    assert error["loc"] == loc and text in error["msg"], error
    assert api.client.get("/v1/jobs", headers=auth).json()["items"] == []


def test_dry_run_reports_a_remote_teacher_job(api, auth, refs):
    report = api.client.post("/v1/jobs/validate", headers=auth, json=_spec(refs))
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["valid"] is True and body["problems"] == []
    assert body["method"]["teachers"] == 0  # no teacher weights on this host
    assert body["memory"] is not None and body["plan"]["total_steps"] == 5
    bad = api.client.post("/v1/jobs/validate", headers=auth,
                          json=_spec(refs, {"url": "http://evil.example"})).json()  # fmt: skip
    assert bad["valid"] is False
    assert bad["problems"][0]["loc"] == ["body", "teacher", "remote", "url"]


def test_model_and_remote_together_are_refused(api, auth, refs):
    spec = _spec(refs)
    spec["teacher"]["model"] = refs["student"]
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 422
    assert "exactly one of model or remote" in response.json()["errors"][0]["msg"]
