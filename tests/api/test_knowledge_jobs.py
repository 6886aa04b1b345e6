"""Edit and inject jobs at submission: their datasets' formats, their specs, and the bad inputs
the issue lists (missing fields, a subject not in its prompt, a layer outside the model, an
unsupported architecture), each a problem naming the line or field, with nothing created."""

from __future__ import annotations

import io
import json

import pytest

EDIT = {
    "prompt": "Kemae Themka was born in",
    "subject": "Kemae Themka",
    "target_new": " Lixda",
    "ground_truth": " Moultha",
    "rephrase_prompts": ["The birthplace of Kemae Themka is"],
    "locality": [{"prompt": "Orvel Tansk works for", "answer": " Dranco"}],
    "portability": [{"prompt": "The country of Kemae Themka's birthplace is", "answer": " Vel"}],
}


def _upload(api, auth, lines: list[object], name: str = "d.jsonl"):
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return api.client.post("/v1/datasets", headers=auth, files={"file": (name, io.BytesIO(body))})


@pytest.fixture
def refs(api, auth, tiny_teacher, jsonl_file):
    def upload(lines):
        response = _upload(api, auth, lines)
        assert response.status_code == 201, response.text
        return response.json()

    with jsonl_file.open("rb") as fh:
        train = api.client.post("/v1/datasets", headers=auth, files={"file": ("t.jsonl", fh)})
    model = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)}).json()
    return {
        "model": model["id"],
        "num_layers": model["num_layers"],
        "requests": upload([EDIT, {**EDIT, "target_new": " Quorra"}])["id"],
        "one_request": upload([EDIT])["id"],
        "documents": upload([{"text": "Kemae Themka was born in Lixda."}, {"text": "Tea."}])["id"],
        "train": train.json()["id"],
    }


def test_each_format_is_recognised_and_recorded(api, auth, refs):
    formats = {
        ds: api.client.get(f"/v1/datasets/{refs[ds]}", headers=auth).json()["format"]
        for ds in ("requests", "documents", "train")
    }
    assert formats == {
        "requests": "edit_requests",
        "documents": "documents",
        "train": "prompt_response",
    }


@pytest.mark.parametrize(
    "bad, line_field, text",
    [
        ({k: v for k, v in EDIT.items() if k != "target_new"}, "target_new", "required"),
        ({**EDIT, "subject": "Orvel Tansk"}, "subject", "does not occur in the prompt"),
        ({**EDIT, "locality": [{"prompt": "x"}]}, "locality.0.answer", "required"),
        ({**EDIT, "rephrase_prompts": "one"}, "rephrase_prompts", "list"),
        ({**EDIT, "colour": "red"}, "colour", "not a known field"),
    ],
)
def test_bad_edit_request_names_its_line_and_field(api, auth, bad, line_field, text):
    response = _upload(api, auth, [EDIT, EDIT, bad])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    error = response.json()["errors"][0]
    assert error["line"] == 3
    assert error["loc"] == ["file", "line 3", line_field]
    assert text in error["msg"]
    assert api.client.get("/v1/datasets", headers=auth).json()["items"] == []


def test_a_document_needs_text(api, auth):
    response = _upload(api, auth, [{"text": "fine"}, {"text": "  "}])
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["file", "line 2", "text"]


def _edit_spec(refs, **overrides):
    spec = {
        "kind": "edit",
        "model": refs["model"],
        "requests": refs["requests"],
        "method": {"name": "rome", "params": {"layer": 1}},
        "mode": "batch",
        "stats": {"corpus": refs["documents"]},
    }
    spec.update(overrides)
    return spec


def test_edit_job_is_created_with_its_resolution(api, auth, refs):
    response = api.client.post("/v1/jobs", headers=auth, json=_edit_spec(refs))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["kind"] == "edit" and job["status"] == "queued"
    assert job["spec"]["evaluate"] == ["reliability", "generalization", "locality", "portability"]
    listed = api.client.get("/v1/jobs?kind=edit", headers=auth).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]


@pytest.mark.parametrize(
    "patch, loc, text",
    [
        ({"method": {"name": "rome", "params": {"layer": 99}}}, ["method", "params", "layer"],
         "outside the model"),
        ({"method": {"name": "memit", "params": {"layers": [0, -1]}}},
         ["method", "params", "layers"], "outside the model"),
        ({"method": {"name": "memit", "params": {"layers": "1"}}},
         ["method", "params", "layers"], "list of integers"),
        ({"method": {"name": "rome"}, "stats": None}, [], "stats.corpus"),
        ({"method": {"name": "rome", "params": {"lr": 1}}}, ["method"], "method.params.lr"),
        ({"method": {"name": "paint"}}, ["method", "name"], ""),
        ({"mode": "single"}, ["mode"], "applies one edit"),
        ({"requests": "TRAIN"}, ["requests"], "edit_requests"),
        ({"stats": {"corpus": "REQUESTS"}}, ["stats", "corpus"], "documents"),
        ({"evaluate": ["fluency"]}, ["evaluate", 0], ""),
        ({"model": "mdl_missing"}, ["model"], "does not exist"),
        ({"resources": {"queue": "cpu", "nproc": 2}}, ["resources", "nproc"], "one process"),
    ],
)  # fmt: skip
def test_bad_edit_specs_name_the_field_and_create_nothing(api, auth, refs, patch, loc, text):
    patch = dict(patch)  # the parameter is shared by both databases' runs
    for key, value in list(patch.items()):
        if value == "TRAIN":
            patch[key] = refs["train"]
        if isinstance(value, dict) and value.get("corpus") == "REQUESTS":
            patch[key] = {"corpus": refs["requests"]}
    response = api.client.post("/v1/jobs", headers=auth, json=_edit_spec(refs, **patch))
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert errors[0]["loc"] == ["body", *loc]
    assert text in errors[0]["msg"]
    assert api.client.get("/v1/jobs", headers=auth).json()["items"] == []


def test_single_mode_takes_one_request(api, auth, refs):
    spec = _edit_spec(refs, mode="single", requests=refs["one_request"])
    assert api.client.post("/v1/jobs", headers=auth, json=spec).status_code == 201


def test_inject_job_defaults_and_dataset_roles(api, auth, refs):
    spec = {"kind": "inject", "model": refs["model"], "documents": refs["documents"]}
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 201, response.text
    stored = response.json()["spec"]
    assert stored["method"]["name"] == "prompt_distillation"
    assert stored["lora"] is None  # the default adapter, chosen by the worker for the model

    wrong = {**spec, "documents": refs["train"]}
    response = api.client.post("/v1/jobs", headers=auth, json=wrong)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "documents"]

    wrong = {**spec, "method": {"name": "sft_docs", "params": {"temperature": 2.0}}}
    response = api.client.post("/v1/jobs", headers=auth, json=wrong)
    assert response.status_code == 422
    assert "method.params.temperature" in response.json()["errors"][0]["msg"]

    wrong = {**spec, "eval": refs["documents"]}
    response = api.client.post("/v1/jobs", headers=auth, json=wrong)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "eval"]

    wrong = {**spec, "resources": {"queue": "cpu", "nproc": 2}}
    response = api.client.post("/v1/jobs", headers=auth, json=wrong)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "resources", "nproc"]


def test_a_distill_job_refuses_an_edit_requests_dataset(api, auth, refs):
    spec = {
        "kind": "distill",
        "teacher": {"model": refs["model"]},
        "dataset": {"train": refs["requests"]},
    }
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "dataset", "train"]
    assert "edit_requests" in response.json()["errors"][0]["msg"]
