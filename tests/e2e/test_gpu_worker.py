"""A job on the `gpu` queue runs on the worker's CUDA device and records it."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import TERMINAL, Api, credentials, distill_spec
from tests.support.stack import Stack, stack_env

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_gpu_queue_job_runs_on_cuda(tmp_path, model_root, tiny_teacher, jsonl_file, stack_logs):
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env=stack_env(tmp_path / "home", model_root), log_dir=logs)
    stack_logs.append(stack)
    stack.start_serve()
    api = Api(stack.url, credentials(tmp_path / "home"))
    spec = distill_spec(api.register(tiny_teacher), api.upload_dataset(jsonl_file))
    spec["resources"] = {"queue": "gpu"}
    job = api.call("POST", "/v1/jobs", 201, json=spec)
    assert job["queue"] == "gpu"
    done = api.wait_status(job["id"], TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job["id"])
    assert done["device"] == "cuda"
    assert done["result"]["student"]["loss"] < done["result"]["initial_student"]["loss"]
