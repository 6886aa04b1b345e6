"""The embedded default end to end: `distill serve` (SQLite + SQLAlchemy broker + a worker
process beside the API), a job posted over HTTP, the student downloaded, loaded and run."""

from __future__ import annotations

import io
import tarfile

from tests.e2e.conftest import TERMINAL, distill_spec


def test_distill_serve_runs_a_job_end_to_end(tmp_path, embedded_stack, tiny_teacher, jsonl_file):
    stack, api = embedded_stack
    home = tmp_path / "home"
    assert (home / "distill.db").exists()

    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    job_id = api.call("POST", "/v1/jobs", 201, json=distill_spec(teacher, dataset))["id"]
    job = api.wait_status(job_id, TERMINAL, timeout=300)
    assert job["status"] == "succeeded", (job, api.events(job_id))
    assert (home / "broker.db").exists()  # the message went through the serverless broker
    assert job["device"] == "cpu" and job["progress"] == {"step": 12, "total_steps": 12}

    result = job["result"]
    for part in ("student", "teacher", "initial_student"):
        assert set(result[part]) >= {"loss", "exact_match", "rouge_l", "examples"}
    # 12 steps of KD from a copied half of the teacher must lower the held-out loss.
    assert result["student"]["loss"] < result["initial_student"]["loss"]

    steps = [m["step"] for m in api.metrics(job_id, "train/loss")]
    assert steps == list(range(1, 13))
    ckpts = api.call("GET", f"/v1/jobs/{job_id}/checkpoints")["items"]
    assert [c["step"] for c in ckpts] == [6, 9, 12]  # the last three are kept

    model = api.call("GET", f"/v1/models/{job['output_model_id']}")
    assert model["source"] == "job" and model["source_job_id"] == job_id
    assert model["lineage"]["teacher"]["id"] == teacher
    assert model["num_layers"] == 1

    archive = api.http.get(f"/v1/models/{model['id']}/download")
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "student", filter="data")
    (student_dir,) = (tmp_path / "student").iterdir()

    from ml.evaluation.generation import greedy_generate
    from ml.loading import load_causal_lm, load_tokenizer

    student = load_causal_lm(student_dir)
    tokenizer = load_tokenizer(student_dir)
    (text,) = greedy_generate(student, tokenizer, ["### Instruction:\nx\n### Response:\n"],
                              max_new_tokens=4)  # fmt: skip
    assert isinstance(text, str)


def test_stopping_distill_serve_stops_its_worker(embedded_stack):
    """SIGTERM to `distill serve` alone (not its process group) ends the worker it started."""
    import os
    import signal

    import psutil

    stack, _ = embedded_stack
    serve = stack.procs["serve"]
    children = psutil.Process(serve.pid).children(recursive=True)
    workers = [c for c in children if "celery" in " ".join(c.cmdline())]
    assert len(workers) == 1
    os.kill(serve.pid, signal.SIGTERM)
    serve.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, "the worker outlived `distill serve`"


def test_distill_serve_replaces_a_worker_that_died(embedded_stack, tiny_teacher, jsonl_file):
    """A worker SIGKILLed under `distill serve` (as an OOM kill would) is started again, and a
    job posted afterwards runs: the embedded service never sits with queued jobs and no worker."""
    import os
    import signal

    import psutil

    from tests.support.stack import wait_until

    stack, api = embedded_stack
    serve = psutil.Process(stack.procs["serve"].pid)

    def workers() -> list[psutil.Process]:
        return [c for c in serve.children() if "celery" in " ".join(c.cmdline())]

    (dead,) = workers()
    os.kill(dead.pid, signal.SIGKILL)
    psutil.wait_procs([dead], timeout=30)
    wait_until(lambda: [w.pid for w in workers()] not in ([], [dead.pid]), timeout=60,
               what="a new worker")  # fmt: skip
    assert len(workers()) == 1

    spec = distill_spec(api.register(tiny_teacher), api.upload_dataset(jsonl_file), max_steps=2,
                        checkpoint_every=0)  # fmt: skip
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    job = api.wait_status(job_id, TERMINAL, timeout=300)
    assert job["status"] == "succeeded", (job, api.events(job_id))
    assert "exited with -9" in (stack.log_dir / "serve.log").read_text()


def test_same_spec_and_seed_give_the_same_metrics(embedded_stack, tiny_teacher, jsonl_file):
    """Reproducible on one machine: two jobs from one spec record identical losses, and each
    records what it ran on."""
    _, api = embedded_stack
    spec = distill_spec(api.register(tiny_teacher), api.upload_dataset(jsonl_file), max_steps=5,
                        checkpoint_every=0)  # fmt: skip
    spec["method"]["teacher_cache"] = "off"
    runs = []
    for _ in range(2):
        job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
        job = api.wait_status(job_id, TERMINAL, timeout=300)
        assert job["status"] == "succeeded"
        runs.append((job, [m["value"] for m in api.metrics(job_id, "train/loss")]))
    (first, losses_a), (second, losses_b) = runs
    assert len(losses_a) == 5 and losses_a == losses_b
    run = first["result"]["run"]
    assert run["seed"] == 0 and run["effective_batch_size"] == 8 and run["device"] == "cpu"
    assert run["versions"]["torch"].startswith("2.") and len(run["spec_sha256"]) == 64
    assert run["spec_sha256"] == second["result"]["run"]["spec_sha256"]
