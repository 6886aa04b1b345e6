from __future__ import annotations

import pytest
from sqlalchemy import select

from models import Job
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
        "name": "tiny",
        "metadata": {"team": "search", "ticket": "KD-42"},
        "teacher": {"model": refs["teacher"]},
        "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
        "dataset": {"train": refs["dataset"]},
        "method": {"loss": "fkl", "params": {"temperature": 2.0, "alpha_ce": 0.1}},
        "training": {"max_steps": 5, "batch_size": 4},
    }
    spec.update(overrides)
    return spec


def test_create_get_and_resolve(api, auth, refs):
    response = api.client.post("/v1/jobs", headers=auth, json=_spec(refs))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["queue"] == "cpu"
    assert job["spec"]["training"]["lr"] == 2e-4  # defaults filled in
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["id"] == job["id"]
    with session_scope(api.database_url) as session:
        row = session.scalars(select(Job).where(Job.id == job["id"])).one()
        assert row.resolved["student"]["init"]["from_teacher_layers"] == 2
        assert row.resolved["datasets"]["train"]["rows"] == 400
    events = api.client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
    assert [e["message"] for e in events] == ["job validated and queued"]


@pytest.mark.parametrize(
    "patch, loc, text",
    [
        ({"method": {"loss": "nope"}}, ["body", "method", "loss"], "unknown loss"),
        ({"method": {"loss": "dskd"}}, ["body", "student", "model"], "its own tokenizer"),
        ({"method": {"loss": "uld", "data_mode": "onpolicy"}}, ["body", "method"], "offline"),
        ({"method": {"params": {"alpha_ce": 2}}}, ["body", "method"], "alpha_ce"),
        ({"method": {"params": {"beta": 0.5}}}, ["body", "method"], "unknown parameter 'beta'"),
        ({"method": {"loss": "jsd", "params": {"beta": 1.5}}}, ["body", "method"], "'beta'"),
        ({"method": {"loss": "skl", "params": {"alpha": -1}}}, ["body", "method"], "'alpha'"),
        ({"method": {"loss": "ce", "data_mode": "onpolicy"}}, ["body", "method"], "KD loss"),
        ({"method": {"data_mode": "opd"}}, ["body", "method"], "set loss to 'rkl'"),
        ({"method": {"data_mode": "sideways"}}, ["body", "method", "data_mode"], "unknown"),
        (
            {"method": {"loss": "rkl", "teacher_cache": {"mode": "topk"}}},
            ["body", "method"],
            "teacher_cache settings need",
        ),
        ({"method": {"generation": {"top_p": 0}}}, ["body", "method", "generation", "top_p"], ""),
        ({"training": {"batch_size": 0}}, ["body", "training", "batch_size"], "greater than"),
        ({"training": {"epochs": 1, "typo": 1}}, ["body", "training", "typo"], "not permitted"),
        ({"kind": "edit"}, ["body", "model"], "Field required"),  # parsed as an edit spec
        ({"kind": "train"}, ["body", "kind"], "must be one of"),
        ({"teacher": {"model": "mdl_missing"}}, ["body", "teacher", "model"], "does not exist"),
        ({"teacher": {"model": "/etc"}}, ["body", "teacher", "model"], "model root"),
        ({"dataset": {"train": "ds_missing"}}, ["body", "dataset", "train"], "does not exist"),
        (
            {"student": {"model": {"init": {"from_teacher_layers": 9}}}},
            ["body", "student", "model", "init", "from_teacher_layers"],
            "exceeds",
        ),
        (
            {"student": {"lora": {"target_modules": ["q_proj", "c_attn"]}}},
            ["body", "student", "lora", "target_modules"],
            "c_attn is not a linear module of the student",
        ),
        ({"student": {"lora": {"r": 0}}}, ["body", "student", "lora", "r"], "greater than"),
    ],
)
def test_bad_specs_name_the_field_and_create_nothing(api, auth, refs, patch, loc, text):
    response = api.client.post("/v1/jobs", headers=auth, json=_spec(refs, **patch))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["errors"][0]["loc"] == loc
    assert text in problem["errors"][0]["msg"]
    assert api.client.get("/v1/jobs", headers=auth).json()["items"] == []


def test_oversized_spec_is_refused_before_parsing(api, auth, refs):
    spec = _spec(refs, metadata={"blob": "x" * 300_000})
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def test_list_filters_and_cursor(api, auth, refs):
    ids = []
    for team in ("search", "ads", "search"):
        spec = _spec(refs, metadata={"team": team})
        ids.append(api.client.post("/v1/jobs", headers=auth, json=spec).json()["id"])
    page = api.client.get("/v1/jobs", headers=auth, params={"metadata.team": "search"}).json()
    assert [j["id"] for j in page["items"]] == [ids[2], ids[0]]
    first = api.client.get("/v1/jobs", headers=auth, params={"limit": 2}).json()
    assert [j["id"] for j in first["items"]] == [ids[2], ids[1]]
    second = api.client.get(
        "/v1/jobs", headers=auth, params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [j["id"] for j in second["items"]] == [ids[0]] and second["next_cursor"] is None
    queued = api.client.get("/v1/jobs", headers=auth, params={"status": "running"}).json()
    assert queued["items"] == []


def test_cancel_queued_then_conflict(api, auth, refs):
    job = api.client.post("/v1/jobs", headers=auth, json=_spec(refs)).json()
    cancelled = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


def test_another_projects_job_is_404_everywhere(api, auth, refs):
    job = api.client.post("/v1/jobs", headers=auth, json=_spec(refs)).json()
    other = api.new_project("other")
    other.pop("project_id")
    for suffix in ("", "/events", "/metrics", "/checkpoints"):
        assert api.client.get(f"/v1/jobs/{job['id']}{suffix}", headers=other).status_code == 404
    assert api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=other).status_code == 404
    # and another project cannot use this project's dataset or teacher either
    response = api.client.post("/v1/jobs", headers=other, json=_spec(refs))
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "teacher", "model"]


def test_lora_and_several_teachers_are_accepted(api, auth, refs):
    spec = _spec(
        refs,
        teacher=None,
        teachers=[{"model": refs["teacher"], "weight": 2}, {"model": refs["teacher"]}],
        student={"model": {"init": {"from_teacher_layers": 2}},
                 "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"], "merge": False}},
    )  # fmt: skip
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 201, response.text
    with session_scope(api.database_url) as session:
        row = session.scalars(select(Job).where(Job.id == response.json()["id"])).one()
        assert [t["weight"] for t in row.resolved["teachers"]] == [2.0, 1.0]


def test_teacher_and_teachers_together_are_refused(api, auth, refs):
    spec = _spec(refs, teachers=[{"model": refs["teacher"]}, {"model": refs["teacher"]}])
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 422
    assert "exactly one of teacher or teachers" in response.json()["detail"]


def test_routing_names_the_first_unroutable_dataset_line(api, auth, refs, instruction_records):
    from ml.data.instructions import TASKS

    tasks = list(TASKS)
    routed = [{"model": refs["teacher"], "route": task} for task in tasks[:-1]]
    spec = _spec(refs, teacher=None, teachers=routed, routing={"field": "task"})
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 422
    first_bad = 1 + next(i for i, r in enumerate(instruction_records) if r["task"] == tasks[-1])
    problem = response.json()
    assert problem["errors"][0]["line"] == first_bad
    assert problem["errors"][0]["loc"] == ["body", "routing", "field"]
    routed.append({"model": refs["teacher"], "route": tasks[-1]})
    spec = _spec(refs, teacher=None, teachers=routed, routing={"field": "task"})
    assert api.client.post("/v1/jobs", headers=auth, json=spec).status_code == 201


def test_a_student_with_another_tokenizer_needs_a_cross_vocab_loss(
    api, auth, refs, tiny_other_vocab_student
):
    student = api.client.post(
        "/v1/models", headers=auth, json={"path": str(tiny_other_vocab_student)}
    ).json()["id"]
    spec = _spec(refs, student={"model": student})
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "student", "model"]
    assert "cross-vocabulary loss (dskd, uld, mined)" in response.json()["detail"]
    spec["method"] = {"loss": "dskd", "params": {"alpha_ce": 0.5}}
    assert api.client.post("/v1/jobs", headers=auth, json=spec).status_code == 201
