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


def test_gpu_onpolicy_taid_chunked_lora_job(embedded_stack, tiny_teacher, jsonl_file):
    _, api = embedded_stack
    spec = distill_spec(api.register(tiny_teacher), api.upload_dataset(jsonl_file), max_steps=6,
                        kd_chunk_tokens=16)  # fmt: skip
    spec["resources"] = {"queue": "gpu"}
    spec["method"] = {"loss": "taid", "data_mode": "onpolicy", "lmbda": 0.5,
                      "generation": {"max_new_tokens": 8}}  # fmt: skip
    spec["student"]["lora"] = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    job = api.call("POST", "/v1/jobs", 201, json=spec)
    done = api.wait_status(job["id"], TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job["id"])
    assert done["device"] == "cuda"
    assert len(api.metrics(job["id"], "train/taid_t")) == 6
