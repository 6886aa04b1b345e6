"""Pause and resume through the embedded stack (`distill serve`: one real worker process):
a running job checkpoints and pauses, the freed worker runs another job meanwhile, and the
resumed job ends with every step recorded once and the same losses as an uninterrupted run."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import TERMINAL, distill_spec
from tests.support.stack import wait_until

STEPS = 800  # the pause lands at the next heartbeat (10 s): the job must still be running then


def _spec(teacher: str, dataset: str) -> dict:
    spec = distill_spec(teacher, dataset, max_steps=STEPS, checkpoint_every=0)
    spec["method"]["teacher_cache"] = "off"
    return spec


def test_pause_checkpoints_frees_the_worker_and_resume_continues_exactly(
    embedded_stack, tiny_teacher, jsonl_file
):
    _, api = embedded_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = _spec(teacher, dataset)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    wait_until(lambda: api.job(job_id)["progress"]["step"] >= 10, timeout=300,
               what="the first metrics")  # fmt: skip
    pausing = api.call("POST", f"/v1/jobs/{job_id}/pause")
    if pausing["status"] == "succeeded":  # pragma: no cover - a machine far faster than ours
        pytest.skip("the job finished before the pause landed")
    assert pausing["status"] == "pausing"
    assert api.call("POST", f"/v1/jobs/{job_id}/resume", 409)["title"] == "Job not resumable"

    paused = api.wait_status(job_id, ("paused", *TERMINAL), timeout=120)
    assert paused["status"] == "paused", api.events(job_id)
    step = paused["progress"]["step"]
    assert 10 <= step < STEPS and paused["queue_position"] is None
    checkpoints = api.call("GET", f"/v1/jobs/{job_id}/checkpoints")["items"]
    assert [c["step"] for c in checkpoints] == [step]  # checkpoint_every=0: the pause wrote it
    assert f"paused at step {step}; the worker is free" in [
        e["message"] for e in api.events(job_id)
    ]
    assert [m["step"] for m in api.metrics(job_id, "train/loss")] == list(range(1, step + 1))

    # The one worker is free: an identical job runs to the end while the first stays paused.
    reference_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    reference = api.wait_status(reference_id, TERMINAL, timeout=300)
    assert reference["status"] == "succeeded"
    assert api.job(job_id)["status"] == "paused"  # the sweeper never re-queues a paused job

    resumed = api.call("POST", f"/v1/jobs/{job_id}/resume")
    assert resumed["status"] == "queued" and resumed["queue_position"] == 1
    done = api.wait_status(job_id, TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job_id)
    assert done["progress"] == {"step": STEPS, "total_steps": STEPS}
    assert f"resumed from step {step}" in [e["message"] for e in api.events(job_id)]

    losses = api.metrics(job_id, "train/loss")
    assert [m["step"] for m in losses] == list(range(1, STEPS + 1))  # none twice, none missing
    expected = [m["value"] for m in api.metrics(reference_id, "train/loss")]
    assert [m["value"] for m in losses] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_pause_queued_then_cancel(embedded_stack, tiny_teacher, jsonl_file):
    """A paused job can be cancelled; pausing an ended job is a 409 problem."""
    _, api = embedded_stack
    spec = _spec(api.register(tiny_teacher), api.upload_dataset(jsonl_file))
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    job = api.call("POST", f"/v1/jobs/{job_id}/pause")
    if job["status"] == "pausing":  # the worker claimed it first: wait for the checkpoint
        job = api.wait_status(job_id, ("paused",), timeout=120)
    assert job["status"] == "paused"
    assert api.call("POST", f"/v1/jobs/{job_id}/cancel")["status"] == "cancelled"
    assert api.call("POST", f"/v1/jobs/{job_id}/pause", 409)["status"] == 409
