"""A pipeline written for OpenAI's fine-tuning API, run unchanged against `distill serve`: the
official ``openai`` package with ``base_url=<our url>/v1`` and one of our API keys uploads a chat
file, runs a supervised job and a distillation job to the end, pages through jobs, events and
checkpoints, cancels a third job, and gets OpenAI-shaped errors it can act on."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import credentials
from tests.support.stack import wait_until

TERMINAL = ("succeeded", "failed", "cancelled")
# Small held-out evaluation: the jobs' results are not what this test is about.
SMALL_EVAL = {"evaluation": {"max_examples": 8, "max_new_tokens": 8}}


def _chat_file(path: Path, records: list[dict], n: int) -> Path:
    with path.open("w") as fh:
        for record in records[:n]:
            messages = [
                {"role": "system", "content": "Follow the instruction."},
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["response"]},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def _wait(client: openai.OpenAI, job_id: str) -> openai.types.fine_tuning.FineTuningJob:
    return wait_until(
        lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and job,
        timeout=400,
        what=f"fine-tuning job {job_id} to end",
    )


def test_openai_client_drives_files_and_fine_tuning_jobs(
    tmp_path, embedded_stack, tiny_teacher, instruction_records
):
    stack, api = embedded_stack
    client = openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=credentials(tmp_path / "home"), max_retries=0
    )
    teacher = api.register(tiny_teacher)  # models are registered through our own API

    # Files: upload (OpenAI chat format), retrieve, list, read back.
    path = _chat_file(tmp_path / "chat.jsonl", instruction_records, 40)
    with path.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.purpose == "fine-tune"
    assert uploaded.bytes == path.stat().st_size and uploaded.status == "processed"
    assert client.files.retrieve(uploaded.id).filename == "chat.jsonl"
    assert client.files.content(uploaded.id).read() == path.read_bytes()
    assert [f.id for f in client.files.list()] == [uploaded.id]

    # A supervised job (-> our `ce`) and a distillation job (our method type).
    supervised = client.fine_tuning.jobs.create(
        model=teacher,
        training_file=uploaded.id,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}},
        },
        suffix="sft",
        seed=3,
        metadata={"pipeline": "nightly"},
        extra_body=SMALL_EVAL,
    )
    assert supervised.status == "queued" and supervised.method is not None
    assert supervised.method.type == "supervised" and supervised.hyperparameters.n_epochs == 2
    distilled = client.fine_tuning.jobs.create(
        model=teacher,
        training_file=uploaded.id,
        method={  # type: ignore[arg-type, typeddict-item]  # our extension of the method types
            "type": "distillation",
            "distillation": {
                "student_init": {"from_teacher_layers": "every_2nd"},
                "loss": "fkl",
                "params": {"temperature": 1.0, "alpha_ce": 0.1},
                "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 5},
            },
        },
        extra_body=SMALL_EVAL,
    )
    # A third one, cancelled while it waits behind the others on the single embedded worker.
    doomed = client.fine_tuning.jobs.create(
        model=teacher, training_file=uploaded.id, extra_body=SMALL_EVAL
    )
    cancelled = client.fine_tuning.jobs.cancel(doomed.id)
    assert cancelled.status == "cancelled"

    # Listing one at a time: the SDK follows `after` through every page.
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [
        doomed.id,
        distilled.id,
        supervised.id,
    ]
    page = client.fine_tuning.jobs.list(limit=2)
    assert page.has_more is True and len(page.data) == 2
    only = client.fine_tuning.jobs.list(metadata={"pipeline": "nightly"})
    assert [j.id for j in only.data] == [supervised.id]

    for created in (supervised, distilled):
        job = _wait(client, created.id)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model and job.fine_tuned_model.startswith("mdl_")
        assert job.trained_tokens and job.trained_tokens > 0
        assert job.finished_at and job.finished_at >= job.created_at
        model = api.call("GET", f"/v1/models/{job.fine_tuned_model}")
        assert model["source"] == "job" and model["source_job_id"] == job.id

    # 36 training rows (4 held out), batches of 8: 5 steps an epoch, a checkpoint after each.
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(supervised.id, limit=1))
    assert [c.step_number for c in checkpoints] == [10, 5]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{supervised.id}:ckpt-step-10"
    assert checkpoints[0].metrics.train_loss is not None
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(distilled.id)] == [5]

    events = list(client.fine_tuning.jobs.list_events(distilled.id, limit=3))
    numbers = [int(e.id.removeprefix("ftevent-")) for e in events]
    assert numbers == sorted(numbers, reverse=True)  # newest first, every page followed
    messages = [e.message for e in events]
    assert messages[-1] == "job validated and queued"
    assert {"setup done", "student saved and registered"} <= set(messages)
    assert all(e.object == "fine_tuning.job.event" for e in events)

    assert client.fine_tuning.jobs.retrieve(doomed.id).status == "cancelled"

    # Errors an SDK user can act on: typed exceptions, `param` naming the field.
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model=teacher, training_file="ds_missing")
    assert bad.value.param == "training_file"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("job_missing")
    with pytest.raises(openai.ConflictError) as in_use:
        client.files.delete(uploaded.id)
    assert in_use.value.code == "file_in_use"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0).files.list()
