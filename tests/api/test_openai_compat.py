"""The OpenAI-compatible surface through the app, on SQLite and PostgreSQL: file and job shapes,
the mapping onto our spec, pagination, errors in OpenAI's shape naming the request field."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from models import Checkpoint, Dataset, Job, Metric, utcnow
from models.session import session_scope


def _chat_lines(n: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": f"Reverse the word 'ab{i}'."},
                {"role": "assistant", "content": f"{i}ba"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _upload(api, auth, content: bytes, name: str = "chat.jsonl", purpose: str = "fine-tune"):
    return api.client.post(
        "/v1/files", headers=auth, files={"file": (name, content)}, data={"purpose": purpose}
    )


@pytest.fixture
def teacher_id(api, auth, tiny_teacher):
    response = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def file_id(api, auth):
    response = _upload(api, auth, _chat_lines(40))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _error(response, status: int, param: str | None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    return error


def test_file_upload_in_chat_format_has_the_file_shape(api, auth):
    content = _chat_lines(5)
    response = _upload(api, auth, content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "file" and body["purpose"] == "fine-tune"
    assert body["status"] == "processed" and body["filename"] == "chat.jsonl"
    assert body["bytes"] == len(content) and isinstance(body["created_at"], int)
    assert api.client.get(f"/v1/files/{body['id']}", headers=auth).json() == body
    raw = api.client.get(f"/v1/files/{body['id']}/content", headers=auth)
    assert raw.status_code == 200 and raw.content == content
    # The same object is one of our datasets, in the chat format.
    dataset = api.client.get(f"/v1/datasets/{body['id']}", headers=auth).json()
    assert dataset["format"] == "chat" and dataset["rows"] == 5


def test_file_list_pages_with_after_and_limit(api, auth):
    ids = [_upload(api, auth, _chat_lines(i + 1)).json()["id"] for i in range(3)]
    first = api.client.get("/v1/files", headers=auth, params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [f["id"] for f in first["data"]] == ids[::-1][:2]  # newest first
    rest = api.client.get(
        "/v1/files", headers=auth, params={"limit": 2, "after": first["last_id"]}
    ).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    ascending = api.client.get("/v1/files", headers=auth, params={"order": "asc"}).json()
    assert [f["id"] for f in ascending["data"]] == ids
    other = api.client.get("/v1/files", headers=auth, params={"purpose": "batch"}).json()
    assert other["data"] == []


def test_bad_uploads_are_400_naming_the_field_and_store_nothing(api, auth):
    error = _error(_upload(api, auth, _chat_lines(2), purpose="batch"), 400, "purpose")
    assert "fine-tune" in error["message"]
    bad = _chat_lines(2) + b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    error = _error(_upload(api, auth, bad), 400, "file")
    assert error["message"].startswith("line 3: messages[0].role")
    assert api.client.get("/v1/files", headers=auth).json()["data"] == []


def test_missing_or_bad_key_is_401_in_openai_shape(api):
    response = api.client.get("/v1/files", headers={"Authorization": "Bearer nope"})
    assert _error(response, 401, None)["code"] == "invalid_api_key"
    # The rest of the API keeps problem+json.
    response = api.client.get("/v1/datasets", headers={"Authorization": "Bearer nope"})
    assert response.headers["content-type"] == "application/problem+json"


def _stored_spec(api, job_id: str) -> dict:
    with session_scope(api.database_url) as session:
        return session.scalars(select(Job.spec).where(Job.id == job_id)).one()


def test_supervised_job_maps_onto_a_ce_job(api, auth, teacher_id, file_id):
    body = {
        "model": teacher_id,
        "training_file": file_id,
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}
            },
        },
        "suffix": "tiny-sft",
        "seed": 7,
        "metadata": {"team": "search"},
    }
    response = api.client.post("/v1/fine_tuning/jobs", headers=auth, json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert job["model"] == teacher_id and job["training_file"] == file_id
    assert job["fine_tuned_model"] is None and job["error"] is None and job["seed"] == 7
    assert job["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate_multiplier": pytest.approx(5.0),
    }
    assert job["method"]["type"] == "supervised" and job["metadata"] == {"team": "search"}
    assert job["user_provided_suffix"] == "tiny-sft" and job["organization_id"]
    spec = _stored_spec(api, job["id"])
    assert spec["method"]["loss"] == "ce"
    assert spec["teacher"]["model"] == spec["student"]["model"] == teacher_id
    assert spec["training"]["epochs"] == 2 and spec["training"]["seed"] == 7
    assert spec["training"]["lr"] == pytest.approx(5 * 2e-4)
    # 40 rows, 4 held out (no validation file), batches of 4: 9 steps an epoch, one checkpoint each
    assert spec["training"]["checkpoint_every"] == 9
    assert api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json() == job


def test_legacy_hyperparameters_mean_supervised(api, auth, teacher_id, file_id):
    body = {"model": teacher_id, "training_file": file_id, "hyperparameters": {"n_epochs": 3}}
    job = api.client.post("/v1/fine_tuning/jobs", headers=auth, json=body).json()
    assert job["method"]["type"] == "supervised" and job["hyperparameters"]["n_epochs"] == 3
    assert job["hyperparameters"]["batch_size"] == 16  # "auto": our default


def test_distillation_method_maps_onto_a_kd_job(api, auth, teacher_id, file_id):
    body = {
        "model": teacher_id,
        "training_file": file_id,
        "validation_file": file_id,
        "method": {
            "type": "distillation",
            "distillation": {
                "student_init": {"from_teacher_layers": "every_2nd"},
                "loss": "jsd",
                "params": {"beta": 0.3, "alpha_ce": 0.1},
                "hyperparameters": {"batch_size": 8},
            },
        },
        "training": {"max_steps": 3, "checkpoint_every": 1},
    }
    response = api.client.post("/v1/fine_tuning/jobs", headers=auth, json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    distillation = job["method"]["distillation"]
    assert job["method"]["type"] == "distillation" and distillation["loss"] == "jsd"
    assert distillation["teacher"] == teacher_id and distillation["params"]["beta"] == 0.3
    assert job["validation_file"] == file_id
    spec = _stored_spec(api, job["id"])
    assert spec["student"]["model"]["init"]["from_teacher_layers"] == "every_2nd"
    assert spec["dataset"] == {"train": file_id, "eval": file_id, "eval_fraction": 0.1}
    assert spec["training"]["max_steps"] == 3 and spec["training"]["checkpoint_every"] == 1
    assert spec["training"]["batch_size"] == 8


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"training_file": "ds_missing"}, "training_file"),
        ({"validation_file": "ds_missing"}, "validation_file"),
        ({"model": "mdl_missing"}, "model"),
        ({"model": "/etc"}, "model"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epoch": 1}}}},
            "method.supervised.hyperparameters.n_epoch",
        ),
        (
            {"method": {"type": "distillation", "distillation": {"loss": "nope"}}},
            "method.distillation.loss",
        ),
        (
            {"method": {"type": "distillation", "distillation": {"teacher": "mdl_missing"}}},
            "method.distillation.teacher",
        ),
        ({"method": {"type": "distillation"}}, "method.distillation"),
        (
            {
                "method": {
                    "type": "distillation",
                    "distillation": {"student_init": {"from_teacher_layers": 99}},
                }
            },
            "method.distillation.student_init.from_teacher_layers",
        ),
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        (
            {"hyperparameters": {"batch_size": 2}, "training": {"batch_size": 4}},
            "training.batch_size",
        ),
        ({"training": {"typo": 1}}, "training.typo"),
        ({"integrations": [{"type": "wandb"}]}, "integrations"),
    ],
)
def test_bad_job_requests_are_400_naming_the_request_field(
    api, auth, teacher_id, file_id, patch, param
):
    body = {"model": teacher_id, "training_file": file_id, **patch}
    response = api.client.post("/v1/fine_tuning/jobs", headers=auth, json=body)
    _error(response, 400, param)
    # The failed request left no job behind (each test has a project of its own).
    assert api.client.get("/v1/fine_tuning/jobs", headers=auth).json()["data"] == []


def _create(api, auth, teacher_id, file_id, **extra) -> dict:
    body = {"model": teacher_id, "training_file": file_id, **extra}
    response = api.client.post("/v1/fine_tuning/jobs", headers=auth, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_job_list_pages_and_filters_on_metadata(api, auth, teacher_id, file_id):
    ids = [
        _create(api, auth, teacher_id, file_id, metadata={"run": str(i)})["id"] for i in range(3)
    ]
    first = api.client.get("/v1/fine_tuning/jobs", headers=auth, params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = api.client.get(
        "/v1/fine_tuning/jobs", headers=auth, params={"limit": 2, "after": ids[1]}
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    only = api.client.get("/v1/fine_tuning/jobs", headers=auth, params={"metadata[run]": "1"})
    assert [j["id"] for j in only.json()["data"]] == [ids[1]]


def test_cancel_and_events_newest_first(api, auth, teacher_id, file_id):
    job = _create(api, auth, teacher_id, file_id)
    cancelled = api.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth).json()
    assert cancelled["status"] == "cancelled" and isinstance(cancelled["finished_at"], int)
    again = api.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth)
    assert _error(again, 409, None)["code"] == "job_not_cancellable"

    url = f"/v1/fine_tuning/jobs/{job['id']}/events"
    page = api.client.get(url, headers=auth, params={"limit": 1}).json()
    assert page["has_more"] is True
    (newest,) = page["data"]
    assert newest["object"] == "fine_tuning.job.event" and newest["level"] == "info"
    assert newest["message"] == "cancelled before it started" and newest["type"] == "message"
    older = api.client.get(url, headers=auth, params={"after": newest["id"]}).json()
    assert [e["message"] for e in older["data"]] == ["job validated and queued"]
    assert older["has_more"] is False
    _error(api.client.get(url, headers=auth, params={"after": "x"}), 400, "after")


def test_pause_and_resume_a_queued_job(api, auth, teacher_id, file_id):
    job = _create(api, auth, teacher_id, file_id)
    url = f"/v1/fine_tuning/jobs/{job['id']}"
    assert api.client.post(f"{url}/pause", headers=auth).json()["status"] == "paused"
    assert api.client.get(url, headers=auth).json()["status"] == "paused"
    assert api.client.post(f"{url}/resume", headers=auth).json()["status"] == "queued"
    assert _error(api.client.post(f"{url}/resume", headers=auth), 409, None)["code"] == (
        "job_not_resumable"
    )


def test_missing_job_is_404_naming_the_path_parameter(api, auth):
    for suffix in ("", "/events", "/checkpoints"):
        response = api.client.get(f"/v1/fine_tuning/jobs/job_nope{suffix}", headers=auth)
        _error(response, 404, "fine_tuning_job_id")
    _error(api.client.get("/v1/files/ds_nope", headers=auth), 404, "file_id")


def test_a_finished_job_shows_model_tokens_checkpoints_and_error(api, auth, teacher_id, file_id):
    job = _create(api, auth, teacher_id, file_id)
    failed = _create(api, auth, teacher_id, file_id)
    with session_scope(api.database_url) as session:  # what a worker records as it runs
        row = session.get(Job, job["id"])
        assert row is not None
        row.status, row.finished_at, row.output_model_id = "succeeded", utcnow(), teacher_id
        for step in (1, 2, 3, 4):
            session.add(Metric(job_id=row.id, key="train/tokens", step=step, value=100.0))
            session.add(Metric(job_id=row.id, key="train/loss", step=step, value=5.0 - step))
        session.add(Metric(job_id=row.id, key="eval/loss", step=4, value=1.25))
        for step in (2, 4):
            session.add(Checkpoint(id=f"ckpt_{row.id}_{step}", job_id=row.id, step=step,
                                   path="/nowhere", bytes=1, sha256="0" * 64))  # fmt: skip
        other = session.get(Job, failed["id"])
        assert other is not None
        other.status, other.error = "failed", "RuntimeError: out of memory"

    done = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()
    assert done["status"] == "succeeded" and done["fine_tuned_model"] == teacher_id
    assert done["trained_tokens"] == 400
    error = api.client.get(f"/v1/fine_tuning/jobs/{failed['id']}", headers=auth).json()["error"]
    assert error == {"code": "job_failed", "message": "RuntimeError: out of memory",
                     "param": None}  # fmt: skip

    url = f"/v1/fine_tuning/jobs/{job['id']}/checkpoints"
    page = api.client.get(url, headers=auth, params={"limit": 1}).json()
    (last,) = page["data"]
    assert page["has_more"] is True and last["object"] == "fine_tuning.job.checkpoint"
    assert last["step_number"] == 4 and last["fine_tuning_job_id"] == job["id"]
    assert last["fine_tuned_model_checkpoint"] == f"{job['id']}:ckpt-step-4"
    assert last["metrics"]["train_loss"] == 1.0 and last["metrics"]["full_valid_loss"] == 1.25
    rest = api.client.get(url, headers=auth, params={"after": last["id"]}).json()
    assert [c["step_number"] for c in rest["data"]] == [2] and rest["has_more"] is False
    assert rest["data"][0]["metrics"]["full_valid_loss"] is None


def test_delete_refuses_a_file_a_job_uses(api, auth, teacher_id, file_id):
    spare = _upload(api, auth, _chat_lines(3), name="spare.jsonl").json()["id"]
    _create(api, auth, teacher_id, file_id, validation_file=spare)
    for used in (file_id, spare):
        error = _error(api.client.delete(f"/v1/files/{used}", headers=auth), 409, "file_id")
        assert error["code"] == "file_in_use" and "job_" in error["message"]
    unused = _upload(api, auth, _chat_lines(4), name="unused.jsonl").json()["id"]
    deleted = api.client.delete(f"/v1/files/{unused}", headers=auth)
    assert deleted.json() == {"id": unused, "object": "file", "deleted": True}
    _error(api.client.get(f"/v1/files/{unused}", headers=auth), 404, "file_id")
    with session_scope(api.database_url) as session:
        assert session.get(Dataset, unused) is None and session.get(Dataset, spare) is not None


def test_idempotency_key_replays_a_create_and_refuses_another_body(api, auth, teacher_id, file_id):
    body = {"model": teacher_id, "training_file": file_id}
    headers = {**auth, "Idempotency-Key": "nightly-42"}
    first = api.client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    again = api.client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert first.status_code == again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert len(api.client.get("/v1/fine_tuning/jobs", headers=auth).json()["data"]) == 1
    other = api.client.post("/v1/fine_tuning/jobs", headers=headers, json={**body, "seed": 1})
    _error(other, 400, "Idempotency-Key")

    upload = {"Idempotency-Key": "upload-1", **auth}
    files = [_upload_with(api, upload, _chat_lines(2)) for _ in range(2)]
    assert files[0].json()["id"] == files[1].json()["id"]


def _upload_with(api, headers, content: bytes):
    return api.client.post(
        "/v1/files",
        headers=headers,
        files={"file": ("a.jsonl", content)},
        data={"purpose": "fine-tune"},
    )


def test_a_refused_request_rolls_back_so_its_key_can_be_retried(api, auth, teacher_id, file_id):
    """The error travels through the session dependency: the Idempotency-Key row inserted at
    the start of the failed request is rolled back, so the corrected retry goes through."""
    headers = {**auth, "Idempotency-Key": "retry-me"}
    bad = {"model": teacher_id, "training_file": "ds_missing"}
    _error(api.client.post("/v1/fine_tuning/jobs", headers=headers, json=bad), 400, "training_file")
    good = {"model": teacher_id, "training_file": file_id}
    response = api.client.post("/v1/fine_tuning/jobs", headers=headers, json=good)
    assert response.status_code == 200, response.text
    assert "Idempotent-Replayed" not in response.headers
