"""Runs one claimed distillation job: spec -> RecipeConfig -> setup / train / save, with the
recipe's sinks pointed at the database. Everything torch-side lives in ``ml``."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.config import Settings
from api.logging_setup import bind_project, in_job_log_context
from api.registry.service import register_job_output
from api.storage import open_store
from api.webhooks.outbox import job_status_changed
from ml.data.formatting import to_prompt_response
from ml.distillation.distributed import World
from ml.distillation.recipe import DistillRecipe, RecipeConfig
from ml.distillation.recipe_config import teacher_cache_fits
from models import Job, new_id, utcnow
from models.session import rows_updated, session_scope
from workers.artifact_sync import fetch_job_inputs
from workers.db_retry import run_unit
from workers.distributed_launch import StopControl, launch_ranks
from workers.edit_run import run_edit
from workers.inject_run import run_inject
from workers.mlflow_logging import MlflowMirror
from workers.remote_teacher_client import RemoteTeacherHandle, open_remote_for_job
from workers.runtime import JobRecorder, LeaseKeeper, LeaseLost, add_event, job_dir
from workers.student_from_checkpoint import starting_student_dir
from workers.teacher_work import EventSink, prepare_teacher_cache, seqkd_train_records

log = logging.getLogger(__name__)


def read_dataset(
    path: str, route_field: str | None = None
) -> tuple[list[tuple[str, str]], list[Any]]:
    """(prompt, response) pairs, and each line's ``route_field`` value (None without one)."""
    records, routes = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                records.append(to_prompt_response(obj))
                routes.append(obj.get(route_field) if route_field else None)
    return records, routes


def pick_device(queue: str) -> str:
    import torch

    return "cuda" if queue in ("gpu", "gpu-multi") and torch.cuda.is_available() else "cpu"


def split_train_eval(
    job: Job,
) -> tuple[list[tuple[str, str]], list[Any], list[tuple[str, str]]]:
    """Train records, their routes, and the held-out records (the eval set, or a seeded
    ``eval_fraction`` of the training file)."""
    spec, datasets = job.spec, job.resolved["datasets"]
    route_field = (spec.get("routing") or {}).get("field")
    train, routes = read_dataset(datasets["train"]["path"], route_field)
    if "eval" in datasets:
        return train, routes, read_dataset(datasets["eval"]["path"])[0]
    order = list(range(len(train)))
    random.Random(spec["training"]["seed"]).shuffle(order)
    held = set(order[: max(1, int(len(train) * spec["dataset"]["eval_fraction"]))])
    keep = [i for i in range(len(train)) if i not in held]
    return [train[i] for i in keep], [routes[i] for i in keep], [train[i] for i in sorted(held)]


def build_config(
    job: Job,
    settings: Settings,
    device: str,
    event: EventSink,
    remote: RemoteTeacherHandle | None = None,
) -> RecipeConfig:
    spec, resolved = job.spec, job.resolved
    method, training = spec["method"], spec["training"]
    params = method["params"]
    train, routes, evaluation = split_train_eval(job)
    teacher = resolved["teacher"]
    teachers = resolved.get("teachers") or [teacher]
    data_mode = method["data_mode"]
    if data_mode == "seqkd":  # the teacher's responses replace the dataset's (stored, reused)
        train = seqkd_train_records(
            settings, job_id=job.id, teacher=teacher, records=train,
            generation=method["generation"], seed=training["seed"],
            max_length=training["max_length"], device=device, event=event,
        )  # fmt: skip
        data_mode = "offline"
    cache = None
    temperature = float(params.get("temperature", 1.0))
    if method["teacher_cache"] != "off" and teacher_cache_fits(
        method["loss"], data_mode, len(teachers), training["kd_chunk_tokens"]
    ):
        requested = None if method["teacher_cache"] == "auto" else method["teacher_cache"]
        cache = prepare_teacher_cache(
            settings, job_id=job.id, teacher=teacher, records=train,
            max_length=training["max_length"], requested=requested, device=device, event=event,
            remote=remote,
        )  # fmt: skip
        if (
            cache is not None
            and cache.fields["settings"]["mode"] == "sampled"
            and (temperature != 1.0)
        ):
            event("info", "sampled teacher cache skipped: it holds targets at temperature 1", {})
            cache = None
    student = resolved["student"]
    if "from_checkpoint" in student:  # another job's checkpoint weights, as a model directory
        student = {"path": str(starting_student_dir(settings, job.id, student))}
    route_index = {t["route"]: i for i, t in enumerate(teachers)}
    return RecipeConfig(
        teacher_path=Path(teacher["path"]) if "path" in teacher else None,
        remote_teacher=teacher.get("remote"),
        student_path=Path(student["path"]) if "path" in student else None,
        student_init=student.get("init"),
        train_records=train,
        eval_records=evaluation,
        loss=method["loss"],
        loss_params={k: v for k, v in params.items() if k not in ("temperature", "alpha_ce")},
        temperature=temperature,
        alpha_ce=float(params.get("alpha_ce", 0.0)),
        data_mode=data_mode,
        lmbda=method["lmbda"],
        skd_top_k=method["skd_top_k"],
        generation=method["generation"],
        extra_teacher_paths=[Path(t["path"]) for t in teachers[1:]],
        teacher_weights=[t["weight"] for t in teachers] if len(teachers) > 1 else None,
        train_routes=[route_index[r] for r in routes] if spec.get("routing") else None,
        teacher_cache_dir=cache.path if cache else None,
        teacher_cache_fingerprint=cache.fingerprint if cache else None,
        teacher_cache_fields=cache.fields if cache else None,
        lora=spec["student"].get("lora"),
        kd_chunk_tokens=training["kd_chunk_tokens"],
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
        fsdp=spec.get("resources", {}).get("strategy") == "fsdp",
    )


@in_job_log_context  # every log line of this job carries job_id and project_id
def run_claimed_job(settings: Settings, job_id: str, worker_id: str) -> None:
    recorder = JobRecorder(settings, job_id, worker_id)
    keeper = LeaseKeeper(settings, job_id, worker_id)
    keeper.start()
    try:
        job = load_job(settings, job_id)
        job.resolved = fetch_job_inputs(settings, job.resolved)  # paths here, fetched if missing
        log.info("running %s job %s from queue %s", job.kind, job_id, job.queue)
        device = pick_device(job.queue)
        if job.queue in ("gpu", "gpu-multi") and device == "cpu":
            recorder.event("warn", "no CUDA device on this worker; running on the CPU", {})
        recorder.set_fields(device=device)
        runner = {"edit": run_edit, "inject": run_inject}.get(job.kind, _run)
        runner(settings, job, device, recorder, keeper)
    except LeaseLost:
        log.warning("lease on %s lost; another worker resumes it", job_id)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        record_failure(recorder, exc)
    finally:
        keeper.stop()


def load_job(settings: Settings, job_id: str) -> Job:
    """The job row, detached from its session, with its project bound to the log context."""
    with session_scope(settings.resolved_database_url) as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        session.expunge(job)
    bind_project(job.project_id)
    return job


def record_failure(recorder: JobRecorder, exc: BaseException) -> None:
    """Finish the job ``failed`` with the error and the traceback's tail in an event; a lease
    lost meanwhile means another worker owns the job, so nothing is written."""
    tail = "".join(traceback.format_exception(exc)[-3:])
    try:
        recorder.event("error", f"job failed: {exc}", {"traceback": tail})
        recorder.finish("failed", error=f"{type(exc).__name__}: {exc}")
    except LeaseLost:
        pass


def _run(
    settings: Settings,
    job: Job,
    device: str,
    recorder: JobRecorder,
    keeper: LeaseKeeper,
) -> None:
    remote = open_remote_for_job(settings, job.resolved, recorder.event)  # None: a local one
    try:
        config = build_config(job, settings, device, recorder.event, remote)
    except BaseException:
        if remote is not None:
            remote.client.close()
        raise
    resume_from = recorder.resume_point()
    if job.nproc > 1:  # torchrun children train; this process keeps the lease and waits
        if remote is not None:
            remote.client.close()
            raise ValueError("a remote teacher trains in one process: set resources.nproc to 1")
        launch_ranks(settings, job, config, resume_from, recorder, keeper)
        return
    train_and_register(settings, job, config, recorder, keeper, resume_from, None, remote)


def train_and_register(
    settings: Settings,
    job: Job,
    config: RecipeConfig,
    recorder: JobRecorder,
    keeper: StopControl,
    resume_from: Path | None,
    world: World | None,
    remote: RemoteTeacherHandle | None = None,
) -> None:
    """setup / train / save / register, recorded through ``recorder``: the one process of a
    job, or rank 0 of several (``world``; workers/distributed_rank.py)."""
    mirror = MlflowMirror(settings, job, recorder.event)

    def metrics_sink(points: list[Any]) -> None:
        recorder.metrics(points)  # the database first: MLflow gets only what is recorded
        mirror.log_metrics(points)

    recipe = DistillRecipe(
        config,
        metrics_sink=metrics_sink,
        event_sink=recorder.event,
        should_stop=keeper.should_stop,
        on_checkpoint=recorder.checkpoint,
        world=world,
        remote_score=remote.client.score if remote is not None else None,
    )
    try:
        recipe.setup(resume_from=resume_from)
        result: dict[str, Any] = dict(job.result or {})
        if resume_from is None:
            result["initial_student"] = recipe.evaluate("student")
        result["run"] = run_record(job, config)
        if (mlflow_run := mirror.start()) is not None:
            result["mlflow"] = mlflow_run
        recorder.set_fields(total_steps=recipe.total_steps, result=result)
        outcome = recipe.train()
        if outcome.stopped:
            if keeper.lost.is_set():
                raise LeaseLost(job.id)
            if keeper.pause_requested.is_set() and not keeper.cancel_requested.is_set():
                if pause_here(settings, job.id, recorder, recipe, outcome.step):
                    return
            recorder.event("info", f"cancelled at step {outcome.step}", {"step": outcome.step})
            recorder.finish("cancelled")
            mirror.end("cancelled")
            return
        result["student"] = outcome.eval or recipe.evaluate("student")
        if remote is None:  # a remote teacher only scores: nothing here to evaluate
            result["teacher"] = recipe.evaluate("teacher")
        model_id = new_id("mdl")
        out_dir = settings.resolved_artifact_root / "models" / model_id
        recipe.save_student(out_dir)
        open_store(settings).upload_dir(out_dir)  # shared storage: before the row names it
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
        mirror.end("succeeded")
    except LeaseLost:
        raise  # another worker carries on, in the same MLflow run
    except Exception:
        mirror.end("failed")
        raise
    finally:
        try:
            recipe.cleanup()  # flushes pending metrics: must not mask how the job ended
        except Exception:
            log.exception("cleanup of %s failed", job.id)
        if remote is not None:
            remote.client.close()


def pause_here(
    settings: Settings, job_id: str, recorder: JobRecorder, recipe: DistillRecipe, step: int
) -> bool:
    """Checkpoint the current step, then ``pausing -> paused`` with the lease released, in one
    guarded UPDATE. False when the job is no longer ``pausing`` (a cancel came in meanwhile)."""
    path = recipe.save_checkpoint() if step > 0 else None

    def write(session: Session, attempt: int) -> bool:
        touched = rows_updated(
            session,
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == recorder.worker_id)
            .where(Job.status == "pausing")
            .values(status="paused", lease_owner=None, lease_expires_at=None,
                    progress_step=step, updated_at=utcnow())
            .execution_options(synchronize_session=False),
        )  # fmt: skip
        if touched == 1:
            add_event(session, job_id, "info", f"paused at step {step}; the worker is free",
                      step=step, checkpoint=str(path) if path else None)  # fmt: skip
            job_status_changed(session, job_id)
            return True
        row = session.get(Job, job_id)  # an earlier attempt may have committed before a blip
        return bool(attempt and row is not None and row.status == "paused")

    url, deadline = settings.resolved_database_url, settings.db_retry_seconds
    return run_unit(url, write, deadline_seconds=deadline, what=f"pause of {job_id}")


def run_record(job: Job, config: RecipeConfig) -> dict[str, Any]:
    """What the job ran on and with: enough to reproduce it or to explain a difference."""
    import platform

    import peft
    import torch
    import transformers

    spec_json = json.dumps(job.spec, sort_keys=True).encode()
    return {
        "device": config.device,
        "cuda": torch.cuda.get_device_name(0) if config.device.startswith("cuda") else None,
        "seed": config.seed,
        "effective_batch_size": config.batch_size * config.grad_accum,
        "nproc": job.nproc,  # processes sharing each global batch (data parallel)
        "total_steps_planned": config.max_steps,
        "spec_sha256": hashlib.sha256(spec_json).hexdigest(),
        "datasets_sha256": {k: d["sha256"] for k, d in job.resolved["datasets"].items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "platform": platform.platform(),
    }


def _lineage(job: Job) -> dict[str, Any]:
    resolved = job.resolved
    keys = ("id", "path", "tokenizer_sha256", "weights_sha256")
    teachers = resolved.get("teachers") or [resolved["teacher"]]
    return {
        "job_id": job.id,
        "method": job.spec["method"]["loss"],
        "data_mode": job.spec["method"]["data_mode"],
        "teacher": {k: resolved["teacher"].get(k) for k in keys},
        "teachers": [{k: t.get(k) for k in keys} for t in teachers],
        "student_init": resolved["student"].get("init")
        or resolved["student"].get("id")
        or resolved["student"].get("from_checkpoint"),
        "lora": job.spec["student"].get("lora"),
        "datasets": {name: ds["sha256"] for name, ds in resolved["datasets"].items()},
    }
