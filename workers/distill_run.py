"""Runs one claimed distillation job: spec -> RecipeConfig -> setup / train / save, with the
recipe's sinks pointed at the database. Everything torch-side lives in ``ml``."""

from __future__ import annotations

import json
import logging
import random
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.config import Settings
from api.registry.service import register_job_output
from ml.data.formatting import to_prompt_response
from ml.distillation.recipe import DistillRecipe, RecipeConfig
from models import Job, new_id
from models.session import session_scope
from workers.runtime import JobRecorder, LeaseKeeper, LeaseLost, job_dir

log = logging.getLogger(__name__)


def read_records(path: str) -> list[tuple[str, str]]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                records.append(to_prompt_response(json.loads(line)))
    return records


def pick_device(queue: str) -> str:
    import torch

    return "cuda" if queue == "gpu" and torch.cuda.is_available() else "cpu"


def build_config(job: Job, settings: Settings, device: str) -> RecipeConfig:
    spec, resolved = job.spec, job.resolved
    train = read_records(resolved["datasets"]["train"]["path"])
    if "eval" in resolved["datasets"]:
        evaluation = read_records(resolved["datasets"]["eval"]["path"])
    else:  # a deterministic hold-out of the training file
        order = list(range(len(train)))
        random.Random(spec["training"]["seed"]).shuffle(order)
        n_eval = max(1, int(len(train) * spec["dataset"]["eval_fraction"]))
        held = set(order[:n_eval])
        evaluation = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
    student = resolved["student"]
    training, params = spec["training"], spec["method"]["params"]
    return RecipeConfig(
        teacher_path=Path(resolved["teacher"]["path"]),
        student_path=Path(student["path"]) if "path" in student else None,
        student_init=student.get("init"),
        train_records=train,
        eval_records=evaluation,
        loss=spec["method"]["loss"],
        temperature=float(params.get("temperature", 1.0)),
        alpha_ce=float(params.get("alpha_ce", 0.0)),
        epochs=training["epochs"],
        max_steps=training["max_steps"],
        batch_size=training["batch_size"],
        grad_accum=training["grad_accum"],
        lr=training["lr"],
        weight_decay=training["weight_decay"],
        warmup_steps=training["warmup_steps"],
        schedule=training["schedule"],
        max_grad_norm=training["max_grad_norm"],
        max_length=training["max_length"],
        seed=training["seed"],
        checkpoint_every=training["checkpoint_every"],
        eval_every=training["eval_every"],
        eval_max_examples=spec["evaluation"]["max_examples"],
        max_new_tokens=spec["evaluation"]["max_new_tokens"],
        device=device,
        checkpoint_dir=job_dir(settings, job.id) / "checkpoints",
    )


def run_claimed_job(settings: Settings, job_id: str, worker_id: str) -> None:
    recorder = JobRecorder(settings, job_id, worker_id)
    keeper = LeaseKeeper(settings, job_id, worker_id)
    keeper.start()
    try:
        with session_scope(settings.resolved_database_url) as session:
            job = session.scalars(select(Job).where(Job.id == job_id)).one()
            session.expunge(job)
        device = pick_device(job.queue)
        if job.queue == "gpu" and device == "cpu":
            recorder.event("warn", "no CUDA device on this worker; running on the CPU", {})
        recorder.set_fields(device=device)
        _run(settings, job, device, recorder, keeper)
    except LeaseLost:
        log.warning("lease on %s lost; another worker resumes it", job_id)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        tail = "".join(traceback.format_exception(exc)[-3:])
        try:
            recorder.event("error", f"job failed: {exc}", {"traceback": tail})
            recorder.finish("failed", error=f"{type(exc).__name__}: {exc}")
        except LeaseLost:
            pass
    finally:
        keeper.stop()


def _run(
    settings: Settings, job: Job, device: str, recorder: JobRecorder, keeper: LeaseKeeper
) -> None:
    config = build_config(job, settings, device)
    recipe = DistillRecipe(
        config,
        metrics_sink=recorder.metrics,
        event_sink=recorder.event,
        should_stop=keeper.should_stop,
        on_checkpoint=recorder.checkpoint,
    )
    try:
        resume_from = recorder.resume_point()
        recipe.setup(resume_from=resume_from)
        result: dict[str, Any] = dict(job.result or {})
        if resume_from is None:
            result["initial_student"] = recipe.evaluate("student")
        recorder.set_fields(total_steps=recipe.total_steps, result=result)
        outcome = recipe.train()
        if outcome.stopped:
            if keeper.lost.is_set():
                raise LeaseLost(job.id)
            recorder.event("info", f"cancelled at step {outcome.step}", {"step": outcome.step})
            recorder.finish("cancelled")
            return
        result["student"] = outcome.eval or recipe.evaluate("student")
        result["teacher"] = recipe.evaluate("teacher")
        model_id = new_id("mdl")
        out_dir = settings.resolved_artifact_root / "models" / model_id
        recipe.save_student(out_dir)
        with session_scope(settings.resolved_database_url) as session:
            row = register_job_output(
                session=session,
                project_id=job.project_id,
                name=job.name or f"{job.id}-student",
                path=out_dir,
                job_id=job.id,
                model_id=model_id,
                lineage=_lineage(job),
            )
            model_ref = row.id
        recorder.event("info", "student saved and registered", {"model_id": model_ref})
        recorder.finish("succeeded", result=result, output_model_id=model_ref,
                        progress_step=outcome.step)  # fmt: skip
    finally:
        try:
            recipe.cleanup()  # flushes pending metrics: must not mask how the job ended
        except Exception:
            log.exception("cleanup of %s failed", job.id)


def _lineage(job: Job) -> dict[str, Any]:
    resolved = job.resolved
    return {
        "job_id": job.id,
        "method": job.spec["method"]["loss"],
        "teacher": {k: resolved["teacher"].get(k) for k in ("id", "path", "tokenizer_sha256")},
        "student_init": resolved["student"].get("init") or resolved["student"].get("id"),
        "datasets": {name: ds["sha256"] for name, ds in resolved["datasets"].items()},
    }
