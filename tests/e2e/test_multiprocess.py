"""Multi-process jobs end to end: `distill serve` (the API and a real Celery worker offering two
processes, DISTILL_WORKER_MAX_NPROC=2) runs a ``resources: {queue: cpu, nproc: 2}`` job as two
gloo ranks under torchrun (workers/distributed_launch.py). The job's loss curve equals the same
spec's on one process, each step and event is recorded once (rank 1 writes nothing), a model is
registered; a cancel leaves no rank process behind; a pause checkpoints and the resumed
two-process run continues on the one-process curve; a killed rank fails the job (with the
ranks' log tail) and takes the other rank down; ranks whose worker dies stop by themselves."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_client import TERMINAL, Api, credentials, distill_spec
from tests.support.stack import Stack, stack_env, wait_until
from workers.distributed_launch import is_rank_process, rank_pids

LOSS_RTOL = 1e-4  # measured: about 1e-7 (float32 sums in another order)


@pytest.fixture
def two_process_stack(
    tmp_path: Path, model_root: Path, stack_logs: list[Stack]
) -> Iterator[tuple[Stack, Api, Path]]:
    """The embedded stack with a worker that takes jobs of up to two processes."""
    home = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env=stack_env(home, model_root, DISTILL_WORKER_MAX_NPROC="2"), log_dir=logs)
    stack_logs.append(stack)
    stack.start_serve()
    yield stack, Api(stack.url, credentials(home)), home
    stack.stop()
    for folder in (home / "artifacts" / "jobs").glob("*/ranks"):  # a failed test's leftovers
        for pid in rank_pids(folder):
            if is_rank_process(pid):
                os.kill(pid, signal.SIGKILL)


def _spec(api: Api, teacher: Path, data: Path, nproc: int, cache: Any = "off",
          **training: Any) -> dict[str, Any]:  # fmt: skip
    spec = distill_spec(api.register(teacher), api.upload_dataset(data), **training)
    spec["method"]["teacher_cache"] = cache
    spec["resources"] = {"queue": "cpu", "nproc": nproc}
    return spec


def _losses(api: Api, job_id: str) -> dict[int, float]:
    return {m["step"]: m["value"] for m in api.metrics(job_id, "train/loss")}


def _messages(api: Api, job_id: str) -> list[str]:
    return [e["message"] for e in api.events(job_id)]


def _live_ranks(home: Path, job_id: str) -> list[int]:
    return [p for p in rank_pids(home / "artifacts" / "jobs" / job_id / "ranks")
            if is_rank_process(p)]  # fmt: skip


def test_two_process_job_matches_one_process(two_process_stack, tiny_teacher, jsonl_file):
    _, api, _ = two_process_stack
    specs = [
        _spec(api, tiny_teacher, jsonl_file, n, max_steps=8, checkpoint_every=4) for n in (1, 2)
    ]
    single, double = (api.call("POST", "/v1/jobs", 201, json=spec) for spec in specs)
    one = api.wait_status(single["id"], TERMINAL, timeout=300)
    two = api.wait_status(double["id"], TERMINAL, timeout=300)
    assert one["status"] == "succeeded", api.events(single["id"])
    assert two["status"] == "succeeded", api.events(double["id"])

    want, got = _losses(api, single["id"]), _losses(api, double["id"])
    assert sorted(got) == list(range(1, 9))
    worst = max(abs(got[s] - v) / abs(v) for s, v in want.items())
    print(f"largest relative loss difference, 2 processes vs 1: {worst:.2e}")  # pytest -s
    assert worst <= LOSS_RTOL, (got, want)

    # Written once: one rank set up, checkpointed and evaluated (the metrics table would hide
    # a duplicate row; the events table keeps every write).
    messages = _messages(api, double["id"])
    assert "training in 2 processes (gloo)" in messages
    for once in ("setup done", "checkpoint at step 4", "checkpoint at step 8",
                 "student saved and registered"):  # fmt: skip
        assert messages.count(once) == 1, (once, messages)
    setup = next(e for e in api.events(double["id"]) if e["message"] == "setup done")
    assert setup["data"]["world_size"] == 2
    checkpoints = api.call("GET", f"/v1/jobs/{double['id']}/checkpoints")["items"]
    assert sorted(c["step"] for c in checkpoints) == [4, 8]
    assert two["result"]["run"]["nproc"] == 2 and two["progress"]["step"] == 8
    model = api.call("GET", f"/v1/models/{two['output_model_id']}")
    assert model["id"] == two["output_model_id"]
    eval_one = one["result"]["student"]["loss"]
    assert two["result"]["student"]["loss"] == pytest.approx(eval_one, rel=1e-3)


def test_two_process_job_reads_the_teacher_cache(two_process_stack, tiny_teacher, jsonl_file):
    # The first job builds top-k teacher targets; the two-process job's launcher finds them
    # and every rank reads them instead of running the teacher.
    _, api, _ = two_process_stack
    cache = {"mode": "topk", "k": 16}
    specs = [_spec(api, tiny_teacher, jsonl_file, n, cache, max_steps=6, checkpoint_every=0)
             for n in (1, 2)]  # fmt: skip
    single, double = (api.call("POST", "/v1/jobs", 201, json=spec)["id"] for spec in specs)
    assert api.wait_status(single, TERMINAL, timeout=300)["status"] == "succeeded"
    assert api.wait_status(double, TERMINAL, timeout=300)["status"] == "succeeded"
    assert "teacher cache built" in _messages(api, single)
    assert "teacher cache hit" in _messages(api, double)
    want, got = _losses(api, single), _losses(api, double)
    assert sorted(got) == list(range(1, 7))
    worst = max(abs(got[s] - v) / abs(v) for s, v in want.items())
    print(f"largest relative loss difference with the teacher cache: {worst:.2e}")
    assert worst <= LOSS_RTOL, (got, want)


def test_cancel_stops_both_ranks(two_process_stack, tiny_teacher, jsonl_file):
    _, api, home = two_process_stack
    job_id, _ = _running_two_ranks(api, home, tiny_teacher, jsonl_file)
    assert api.call("POST", f"/v1/jobs/{job_id}/cancel")["status"] in ("cancelling", "cancelled")
    done = api.wait_status(job_id, TERMINAL, timeout=120)
    assert done["status"] == "cancelled"
    assert any(m.startswith("cancelled at step ") for m in _messages(api, job_id))
    launcher = next(e for e in api.events(job_id) if e["message"].startswith("training in"))
    torchrun = Path(f"/proc/{launcher['data']['launcher_pid']}")
    # Rank 0 records the cancel, then the ranks exit and the worker reaps torchrun.
    wait_until(lambda: not _live_ranks(home, job_id) and not torchrun.exists(), timeout=60,
               what="the ranks and torchrun to exit")  # fmt: skip


def test_pause_then_resume_on_two_processes(two_process_stack, tiny_teacher, jsonl_file):
    _, api, home = two_process_stack
    steps = 400  # the pause lands at the next heartbeat: the job must still be running then
    spec = _spec(api, tiny_teacher, jsonl_file, 2, max_steps=steps, checkpoint_every=0)
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    paused = api.pause_after_step(job_id, 10)
    step = paused["progress"]["step"]
    checkpoints = api.call("GET", f"/v1/jobs/{job_id}/checkpoints")["items"]
    assert [c["step"] for c in checkpoints] == [step]
    wait_until(lambda: not _live_ranks(home, job_id), timeout=60, what="the ranks to exit")

    api.call("POST", f"/v1/jobs/{job_id}/resume")
    done = api.wait_status(job_id, TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job_id)
    assert f"resumed from step {step}" in _messages(api, job_id)
    single_spec = dict(spec, resources={"queue": "cpu", "nproc": 1})
    reference = api.call("POST", "/v1/jobs", 201, json=single_spec)["id"]
    assert api.wait_status(reference, TERMINAL, timeout=300)["status"] == "succeeded"
    got, want = _losses(api, job_id), _losses(api, reference)
    assert sorted(got) == list(range(1, steps + 1))  # none twice, none missing
    worst = max(abs(got[s] - v) / abs(v) for s, v in want.items())
    print(f"largest relative loss difference over {steps} steps, paused: {worst:.2e}")
    assert worst <= LOSS_RTOL, (got, want)


def _running_two_ranks(api: Api, home: Path, teacher: Path, data: Path) -> tuple[str, list[int]]:
    """A long 2-process job, once both ranks are training: its id and the ranks' pids."""
    spec = _spec(api, teacher, data, 2, max_steps=100_000, checkpoint_every=0)  # minutes long
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    wait_until(lambda: api.job(job_id)["progress"]["step"] >= 3, timeout=300,
               what="the first steps of the two ranks")  # fmt: skip
    ranks = _live_ranks(home, job_id)
    assert len(ranks) == 2
    return job_id, ranks


def test_a_crashed_rank_fails_the_job_and_takes_the_other_down(
    two_process_stack, tiny_teacher, jsonl_file
):
    _, api, home = two_process_stack
    job_id, ranks = _running_two_ranks(api, home, tiny_teacher, jsonl_file)
    os.kill(ranks[1], signal.SIGKILL)  # rank 1 (pids are listed by rank)
    done = api.wait_status(job_id, TERMINAL, timeout=120)
    assert done["status"] == "failed" and "training processes exited with code" in done["error"]
    error = next(e for e in api.events(job_id) if e["message"].startswith("training processes"))
    assert error["level"] == "error" and error["data"]["log_tail"]  # the ranks' last lines
    wait_until(lambda: not _live_ranks(home, job_id), timeout=60, what="rank 0 to exit")


def test_ranks_stop_when_their_worker_dies(two_process_stack, tiny_teacher, jsonl_file):
    stack, api, home = two_process_stack
    job_id, _ = _running_two_ranks(api, home, tiny_teacher, jsonl_file)
    stack.kill("serve")  # SIGKILL: the API and the worker; torchrun runs in its own session
    # Rank 0 sees its launcher gone between steps and every rank stops: no orphan trains on.
    wait_until(lambda: not _live_ranks(home, job_id), timeout=60, what="the ranks to exit")


def test_an_fsdp_job_pauses_resumes_and_matches_one_process(
    two_process_stack, tiny_teacher, jsonl_file
):
    # resources.strategy fsdp: each rank holds half of the student; a pause gathers the full
    # state for rank 0's checkpoint, the resumed ranks shard it again, rank 0 saves the model.
    _, api, home = two_process_stack
    steps = 400  # the pause lands at the next heartbeat: the job must still be running then
    spec = _spec(api, tiny_teacher, jsonl_file, 2, max_steps=steps, checkpoint_every=0)
    spec["resources"]["strategy"] = "fsdp"
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    paused = api.pause_after_step(job_id, 10)
    step = paused["progress"]["step"]
    assert [c["step"] for c in api.call("GET", f"/v1/jobs/{job_id}/checkpoints")["items"]] == [step]
    wait_until(lambda: not _live_ranks(home, job_id), timeout=60, what="the ranks to exit")
    api.call("POST", f"/v1/jobs/{job_id}/resume")
    done = api.wait_status(job_id, TERMINAL, timeout=300)
    assert done["status"] == "succeeded", api.events(job_id)
    assert done["output_model_id"]

    single_spec = dict(spec, resources={"queue": "cpu", "nproc": 1})
    reference = api.call("POST", "/v1/jobs", 201, json=single_spec)["id"]
    single = api.wait_status(reference, TERMINAL, timeout=300)
    assert single["status"] == "succeeded"
    got, want = _losses(api, job_id), _losses(api, reference)
    assert sorted(got) == list(range(1, steps + 1))
    worst = max(abs(got[s] - v) / abs(v) for s, v in want.items())
    print(f"largest relative loss difference, fsdp on 2 processes vs 1: {worst:.2e}")
    assert worst <= LOSS_RTOL, (got, want)
    eval_one = single["result"]["student"]["loss"]
    assert done["result"]["student"]["loss"] == pytest.approx(eval_one, rel=1e-3)
