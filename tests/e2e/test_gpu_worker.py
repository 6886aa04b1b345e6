"""A job on the `gpu` queue runs on the worker's CUDA device and records it."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import TERMINAL, distill_spec

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_gpu_queue_job_runs_on_cuda(embedded_stack, tiny_teacher, jsonl_file):
    _, api = embedded_stack
    spec = distill_spec(api.register(tiny_teacher), api.upload_dataset(jsonl_file))
    spec["resources"] = {"queue": "gpu"}
    job = api.call("POST", "/v1/jobs", 201, json=spec)
    assert job["queue"] == "gpu"
    done = api.wait_status(job["id"], TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job["id"])
    assert done["device"] == "cuda"
    assert done["result"]["student"]["loss"] < done["result"]["initial_student"]["loss"]
