"""Remote teachers end to end: ``distill serve`` (API + a real Celery worker) distils from a
teacher that a second process serves on loopback (``workers.teacher_server``, with an API key
the worker reads from the variable the spec names): once building a teacher-logit cache from
it, once in ``opd`` mode; and a teacher server that dies mid-job fails the job, naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TERMINAL, Api, credentials
from tests.support.remote_teacher import build_student, teacher_server
from tests.support.stack import Stack, stack_env, wait_until

KEY_ENV = "E2E_TEACHER_KEY"


@pytest.fixture
def stack(tmp_path: Path, model_root: Path, stack_logs: list[Stack]) -> tuple[Stack, Api]:
    home = tmp_path / "home"
    env = stack_env(home, model_root, DISTILL_REMOTE_TEACHER_ALLOWED_HOSTS="127.0.0.1",
                    **{KEY_ENV: "s3cret"})  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    served = Stack(env=env, log_dir=logs)
    stack_logs.append(served)
    served.start_serve()
    return served, Api(served.url, credentials(home))


def _spec(url: str, student: str, dataset: str, **method: Any) -> dict[str, Any]:
    return {
        "kind": "distill",
        "teacher": {"remote": {"url": url, "top_k": 8, "api_key_env": KEY_ENV, "timeout_s": 30}},
        "student": {"model": student},
        "dataset": {"train": dataset},
        "method": {"loss": "fkl", "params": {"alpha_ce": 0.2}, **method},
        "training": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 0,
                     "max_length": 96},
        "evaluation": {"max_examples": 8, "max_new_tokens": 4},
    }  # fmt: skip


def _succeeds(api: Api, spec: dict[str, Any]) -> tuple[str, list[str]]:
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    job = api.wait_status(job_id, TERMINAL, timeout=300)
    messages = [e["message"] for e in api.events(job_id)]
    assert job["status"] == "succeeded", (job["error"], messages)
    return job_id, messages


def test_remote_teacher_jobs_with_a_cache_and_in_opd_mode(
    stack: tuple[Stack, Api], tiny_teacher: Path, model_root: Path, jsonl_file: Path
) -> None:
    _, api = stack
    student = api.register(build_student(tiny_teacher, model_root / "tiny-remote-student"))
    dataset = api.upload_dataset(jsonl_file)
    with teacher_server(tiny_teacher, stack[0].log_dir, top_k=8, api_key="s3cret") as server:
        cached = _spec(server.url, student, dataset, teacher_cache={"mode": "topk", "k": 8})
        cached["training"]["checkpoint_every"] = 3
        cached_id, messages = _succeeds(api, cached)
        assert "remote teacher ready" in messages
        assert "teacher cache built" in messages and "KD targets from the teacher cache" in messages
        # Its checkpoint can start a job distilling from a local teacher of the same vocabulary.
        follow = _spec(server.url, student, dataset)
        follow["teacher"] = {"model": api.register(tiny_teacher)}
        follow["student"] = {"model": {"from_checkpoint": {"job": cached_id}}}
        report = api.call("POST", "/v1/jobs/validate", 200, json=follow)
        assert report["valid"] is True, report["problems"]

        opd = _spec(server.url, student, dataset, loss="rkl", data_mode="opd", params={},
                    generation={"max_new_tokens": 6})  # fmt: skip
        job_id, messages = _succeeds(api, opd)
        assert "KD targets from the remote teacher" in messages
        assert len(api.metrics(job_id, "train/opd_reverse_kl")) == 3
        job = api.job(job_id)
        assert "teacher" not in job["result"] and "student" in job["result"]


def test_a_teacher_server_that_dies_mid_job_fails_it_naming_the_url(
    stack: tuple[Stack, Api], tiny_teacher: Path, model_root: Path, jsonl_file: Path
) -> None:
    _, api = stack
    student = api.register(build_student(tiny_teacher, model_root / "tiny-remote-student"))
    dataset = api.upload_dataset(jsonl_file)
    with teacher_server(tiny_teacher, stack[0].log_dir, top_k=8, api_key="s3cret") as server:
        spec = _spec(server.url, student, dataset, teacher_cache="off")
        spec["training"]["max_steps"] = 2000
        job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
        wait_until(lambda: api.metrics(job_id, "train/loss"), timeout=240, what="training steps")
        server.kill()
        job = api.wait_status(job_id, TERMINAL, timeout=120)  # retries, then fails: no hang
    assert job["status"] == "failed"
    assert f"{server.url}/v1/score failed after 5 attempts" in job["error"]
    events = api.events(job_id)
    assert any(e["level"] == "warn" and "retrying" in e["message"] for e in events)
    assert any(e["level"] == "error" and server.url in e["message"] for e in events)
