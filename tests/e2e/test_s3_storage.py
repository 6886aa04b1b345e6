"""Shared storage end to end: uvicorn, Celery workers, PostgreSQL, Redis and an S3-compatible
server (moto's server mode), all real processes on loopback. The API host and each worker host
have DISTILL_HOMEs of their own, as separate machines would: nothing reaches a worker except
through the bucket.

- A job on worker A runs from a dataset and a teacher archive uploaded through the API; its
  checkpoints, its teacher cache and its student land in the bucket, and the API serves the
  student (download, generate) from there.
- Worker B, with an empty cache, starts a job from A's checkpoint (``from_checkpoint``),
  reusing A's teacher cache.
- A job paused on worker A resumes on worker B from the checkpoint A uploaded, with every step
  recorded once."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import TERMINAL, Api, distill_spec
from tests.support import moto_server
from tests.support.moto_server import S3Bucket
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack import Stack
from tests.support.stack_fixtures import start_real_stack

pytestmark = pytest.mark.realstack
s3_endpoint, s3_bucket = moto_server.s3_endpoint, moto_server.s3_bucket


@pytest.fixture
def s3_stack(
    tmp_path: Path, model_root: Path, stack_logs: list[Stack], s3_bucket: S3Bucket
) -> Iterator[tuple[Stack, Api, S3Bucket]]:
    """The API on its own host (``tmp_path/home``), storing into ``s3_bucket``."""
    require_real_stack()
    with fresh_postgres_database() as database_url:
        stack, api = start_real_stack(
            tmp_path, model_root, stack_logs, database_url=database_url,
            broker_url=fresh_redis_url(), **s3_bucket.env(),
        )  # fmt: skip
        yield stack, api, s3_bucket
        for started in stack_logs:
            started.stop()


def worker_host(api_stack: Stack, home: Path, stack_logs: list[Stack]) -> Stack:
    """A worker process on a "host" of its own: same database, broker and bucket, its own home
    (data and artifact roots: its cache), empty at start."""
    stack = Stack(env=dict(api_stack.env, DISTILL_HOME=str(home)), log_dir=api_stack.log_dir)
    stack_logs.append(stack)
    stack.start_worker(f"worker-{home.name}")
    return stack


def upload_teacher(api: Api, directory: Path) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        archive.add(directory, arcname="teacher")
    files = {"file": ("teacher.tar.gz", buf.getvalue())}
    return api.call("POST", "/v1/models/upload", 201, files=files)["id"]


def test_a_job_runs_from_the_bucket_and_another_host_starts_from_its_checkpoint(
    s3_stack, tmp_path, stack_logs, tiny_teacher, jsonl_file
):
    stack, api, bucket = s3_stack
    teacher, dataset = upload_teacher(api, tiny_teacher), api.upload_dataset(jsonl_file)
    sha = api.call("GET", f"/v1/datasets/{dataset}")["sha256"]
    worker_a = worker_host(stack, tmp_path / "host-a", stack_logs)

    spec = distill_spec(teacher, dataset)
    spec["method"]["teacher_cache"] = {"mode": "topk", "k": 32}  # built here, shared below
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    done = api.wait_status(job_id, TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job_id)

    keys = bucket.keys()
    steps = [c["step"] for c in api.call("GET", f"/v1/jobs/{job_id}/checkpoints")["items"]]
    assert sorted(steps) == [6, 9, 12]  # the last three kept; older ones left the bucket too
    ckpt_dirs = {k.split("/")[4] for k in keys if k.startswith(f"artifacts/jobs/{job_id}/")}
    assert ckpt_dirs == {f"step_{s:08d}" for s in steps}
    out = done["output_model_id"]
    assert f"artifacts/models/{out}/model.safetensors" in keys
    assert f"artifacts/models/{out}/config.json" in keys
    caches = {"/".join(k.split("/")[:4]) for k in keys if k.startswith("artifacts/teacher/logits/")}
    assert len(caches) == 1
    # Worker A fetched its inputs into its own cache; the API host never saw the job's files.
    host_a = tmp_path / "host-a"
    assert (host_a / "data" / sha[:2] / f"{sha}.jsonl").read_bytes() == jsonl_file.read_bytes()
    assert (host_a / "artifacts" / "models" / teacher / "teacher" / "config.json").is_file()
    assert not (tmp_path / "home" / "artifacts" / "jobs").exists()
    assert not (tmp_path / "home" / "artifacts" / "models" / out).exists()
    # The API host fetches the student from the bucket to serve it.
    body = {"prompts": ["Add 2 and 3."], "max_new_tokens": 4}
    generated = api.call("POST", f"/v1/models/{out}/generate", json=body)
    assert len(generated["completions"]) == 1
    archive = api.call("GET", f"/v1/models/{out}/download").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert f"{out}/model.safetensors" in tar.getnames()
    worker_a.stop()

    # Host B: an empty cache. Everything it needs comes from the bucket.
    worker_host(stack, tmp_path / "host-b", stack_logs)
    spec = distill_spec(teacher, dataset, max_steps=3)
    spec["student"]["model"] = {"from_checkpoint": {"job": job_id, "step": 9}}
    second = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    finished = api.wait_status(second, TERMINAL, timeout=300)
    assert finished["status"] == "succeeded", api.events(second)
    fetched = tmp_path / "host-b" / "artifacts" / "jobs" / job_id / "checkpoints" / "step_00000009"
    assert (fetched / "model.safetensors").is_file()
    # The teacher cache that host A built is found ("auto") and fetched, not rebuilt.
    messages = [e["message"] for e in api.events(second)]
    assert "teacher cache hit" in messages and not any("cache miss" in m for m in messages)
    (cache,) = caches
    assert (tmp_path / "host-b" / cache).is_dir()


STEPS = 300


def test_a_job_paused_on_one_host_resumes_on_another_from_the_bucket(
    s3_stack, tmp_path, stack_logs, tiny_teacher, jsonl_file
):
    stack, api, bucket = s3_stack
    teacher, dataset = upload_teacher(api, tiny_teacher), api.upload_dataset(jsonl_file)
    worker_a = worker_host(stack, tmp_path / "host-a", stack_logs)
    spec = distill_spec(teacher, dataset, max_steps=STEPS, checkpoint_every=0)
    spec["method"]["teacher_cache"] = "off"
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    paused = api.pause_after_step(job_id, 5)
    step = paused["progress"]["step"]
    name = f"step_{step:08d}"
    assert f"artifacts/jobs/{job_id}/checkpoints/{name}/model.safetensors" in bucket.keys()
    worker_a.stop()

    worker_host(stack, tmp_path / "host-b", stack_logs)
    api.call("POST", f"/v1/jobs/{job_id}/resume")
    done = api.wait_status(job_id, TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job_id)
    assert f"resumed from step {step}" in [e["message"] for e in api.events(job_id)]
    fetched = tmp_path / "host-b" / "artifacts" / "jobs" / job_id / "checkpoints" / name
    assert fetched.is_dir()
    losses = api.metrics(job_id, "train/loss")
    assert [m["step"] for m in losses] == list(range(1, STEPS + 1))  # none twice, none missing
