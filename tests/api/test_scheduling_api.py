"""The API side of scheduling, on both databases: ``priority`` and ``resources`` in job specs
(422 problem+json naming the field), what a job stores, and the project's limit at
GET /v1/projects/me (set by the admin functions the CLI calls)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from api.config import get_settings
from api.projects.admin import create_project_cli, set_project_limit_cli
from models import Job
from models.session import session_scope
from tests.api.test_jobs import _spec, refs

__all__ = ["refs"]  # the fixture, shared with test_jobs


@pytest.mark.parametrize(
    "patch, loc, text",
    [
        ({"priority": 10}, ["body", "priority"], "less than or equal to 9"),
        ({"priority": -1}, ["body", "priority"], "greater than or equal to 0"),
        ({"priority": "high"}, ["body", "priority"], "valid integer"),
        ({"resources": {"queue": "tpu"}}, ["body", "resources", "queue"], "'gpu-multi'"),
        (
            {"resources": {"queue": "gpu-multi"}},
            ["body", "resources", "nproc"],
            "gpu-multi queue is for jobs with nproc of 2 or more",
        ),
        (
            {"resources": {"queue": "gpu", "nproc": 2}},
            ["body", "resources", "nproc"],
            "nproc above 1 on GPUs needs queue 'gpu-multi'",
        ),
        (
            {"resources": {"queue": "cpu", "nproc": 9}},
            ["body", "resources", "nproc"],
            "less than or equal to 8",
        ),
        (
            {"resources": {"queue": "cpu", "nproc": 2, "nnodes": 2}},
            ["body", "resources", "nnodes"],
            "multi-node jobs are not available yet",
        ),
        (
            {"resources": {"queue": "cpu", "nproc": 2, "fsdp": True}},
            ["body", "resources", "fsdp"],
            "Extra inputs are not permitted",
        ),
        (
            {
                "teacher": {"remote": {"url": "http://127.0.0.1:8100"}},
                "resources": {"queue": "cpu", "nproc": 2},
            },
            ["body"],
            "a remote teacher trains in one process: set resources.nproc to 1",
        ),
        (
            {"resources": {"queue": "cpu", "strategy": "fsdp"}},
            ["body", "resources", "strategy"],
            "fsdp shards the student over processes: set nproc to 2 or more",
        ),
        (
            {"resources": {"queue": "cpu", "nproc": 2, "strategy": "zero3"}},
            ["body", "resources", "strategy"],
            "'ddp' or 'fsdp'",
        ),
        (
            {
                "resources": {"queue": "cpu", "nproc": 2, "strategy": "fsdp"},
                "student": {"model": {"init": {"from_teacher_layers": 2}}, "lora": {"r": 4}},
            },
            ["body"],
            "resources.strategy fsdp trains a full student: not with lora",
        ),
        (
            {
                "resources": {"queue": "cpu", "nproc": 2, "strategy": "fsdp"},
                "method": {"loss": "fkl", "data_mode": "onpolicy"},
            },
            ["body"],
            "resources.strategy fsdp needs method.data_mode 'offline' or 'seqkd'",
        ),
        (
            {"resources": {"queue": "gpu-multi", "nproc": 9}},
            ["body", "resources", "nproc"],
            "less than or equal to 8",
        ),
    ],
)
def test_bad_priority_or_resources_are_422_naming_the_field(api, auth, refs, patch, loc, text):
    response = api.client.post("/v1/jobs", headers=auth, json=_spec(refs, **patch))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["errors"][0]["loc"] == loc
    assert text in problem["errors"][0]["msg"]
    assert api.client.get("/v1/jobs", headers=auth).json()["items"] == []


def test_an_edit_spec_takes_priority_too(api, auth):
    spec = {"kind": "edit", "model": "mdl_x", "requests": "ds_x", "method": {"name": "ft"},
            "priority": 12}  # fmt: skip
    problem = api.client.post("/v1/jobs", headers=auth, json=spec).json()
    assert problem["status"] == 422 and problem["errors"][0]["loc"] == ["body", "priority"]


def test_priority_and_resources_are_stored_on_the_job(api, auth, refs):
    spec = _spec(refs, priority=8, resources={"queue": "gpu-multi", "nproc": 4})
    created = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["queue"] == "gpu-multi" and job["spec"]["priority"] == 8
    default = api.client.post("/v1/jobs", headers=auth, json=_spec(refs)).json()
    assert default["spec"]["priority"] == 5
    with session_scope(api.database_url) as session:
        ids = [job["id"], default["id"]]
        rows = dict(session.execute(select(Job.id, Job.priority).where(Job.id.in_(ids))).all())
        nproc = session.scalars(select(Job.nproc).where(Job.id == job["id"])).one()
    assert rows == {job["id"]: 8, default["id"]: 5} and nproc == 4


def test_a_cpu_job_may_ask_for_several_processes(api, auth, refs):
    spec = _spec(refs, resources={"queue": "cpu", "nproc": 2})
    created = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["queue"] == "cpu" and job["spec"]["resources"] == {
        "queue": "cpu",
        "nproc": 2,
        "nnodes": 1,
        "strategy": "ddp",
    }
    with session_scope(api.database_url) as session:
        assert session.scalars(select(Job.nproc).where(Job.id == job["id"])).one() == 2


def test_projects_me_shows_the_limit_the_admin_sets(api):
    settings = get_settings()
    made = create_project_cli("limited", settings, max_running_jobs=3)
    auth = {"Authorization": f"Bearer {made['api_key']}"}
    me = api.client.get("/v1/projects/me", headers=auth).json()
    assert (me["max_running_jobs"], me["effective_max_running_jobs"]) == (3, 3)
    assert me["running_jobs"] == 0
    set_project_limit_cli(made["project_id"], None, settings)
    me = api.client.get("/v1/projects/me", headers=auth).json()
    default = settings.project_max_running_jobs
    assert (me["max_running_jobs"], me["effective_max_running_jobs"]) == (None, default)


def test_a_limit_below_one_is_refused_naming_the_field(api):
    from api.errors import InvalidInput

    made = create_project_cli("p", get_settings())
    with pytest.raises(InvalidInput) as raised:
        set_project_limit_cli(made["project_id"], 0, get_settings())
    assert raised.value.errors[0]["loc"] == ["max_running_jobs"]


def test_an_fsdp_job_is_stored_with_its_strategy(api, auth, refs):
    spec = _spec(refs, resources={"queue": "cpu", "nproc": 2, "strategy": "fsdp"})
    created = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["resources"]["strategy"] == "fsdp"
