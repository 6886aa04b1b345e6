"""Rules of the OpenAI-compatible surface: files are our datasets, fine-tuning jobs are our jobs.
Everything goes through the datasets and jobs services (same validation, storage and queue);
this module only maps shapes and ids. Never commits."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy.orm import Session

from api.config import Settings
from api.datasets import repository as datasets_repository
from api.datasets import service as datasets_service
from api.enqueue import PendingEnqueues
from api.errors import Conflict, InvalidInput, NotFound, field_error
from api.jobs import service as jobs_service
from api.openai_compat import mapping, repository
from api.openai_compat.schemas import (
    CheckpointMetrics,
    CreateFineTuningJob,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
)
from models import Checkpoint, Dataset, Job

PURPOSE = "fine-tune"
FINE_TUNING_KIND = "distill"


class FileInUse(Conflict):
    title = "File in use"
    code = "file_in_use"


# --------------------------------------------------------------------------- files


def create_file(
    *,
    session: Session,
    settings: Settings,
    project_id: str,
    filename: str | None,
    purpose: str,
    source: BinaryIO,
) -> Dataset:
    if purpose != PURPOSE:
        raise field_error(["body", "purpose"], f"only '{PURPOSE}' files are accepted here")
    try:
        return datasets_service.create(
            session=session,
            settings=settings,
            project_id=project_id,
            name=(filename or "file.jsonl")[:200],
            source=source,
        )
    except InvalidInput as exc:  # bad lines: the message names the line, ``param`` the upload
        errors = [{**err, "loc": ["body", "file"]} for err in exc.errors]
        raise InvalidInput(exc.detail, errors=errors) from exc


def get_file_or_raise(*, session: Session, project_id: str, file_id: str) -> Dataset:
    row = datasets_repository.get(session, project_id=project_id, dataset_id=file_id)
    if row is None:
        raise NotFound(
            f"No file with id '{file_id}' in this project.",
            errors=[{"loc": ["path", "file_id"], "msg": "not found"}],
        )
    return row


def list_files(
    *,
    session: Session,
    project_id: str,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
    purpose: str | None,
) -> tuple[builtins.list[Dataset], bool]:
    if purpose is not None and purpose != PURPOSE:
        return [], False  # every file here is a fine-tuning file
    rows = repository.files_page(
        session, project_id=project_id, after=after, limit=limit, order=order
    )
    return rows[:limit], len(rows) > limit


def file_path(*, session: Session, settings: Settings, project_id: str, file_id: str) -> Path:
    row = get_file_or_raise(session=session, project_id=project_id, file_id=file_id)
    return datasets_service.file_path(settings, row)


def delete_file(*, session: Session, project_id: str, file_id: str) -> str:
    """Removes the file from the project. Refused while a job names it: a job's record (its
    lineage, a resume, a later run from its checkpoint) must keep pointing at real data. The
    bytes stay in the content-addressed store, which identical uploads share."""
    row = get_file_or_raise(session=session, project_id=project_id, file_id=file_id)
    users = repository.jobs_using_dataset(session, project_id=project_id, dataset_id=file_id)
    if users:
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        raise FileInUse(
            f"File {file_id} is used by fine-tuning job(s) {shown}; it cannot be deleted.",
            errors=[{"loc": ["path", "file_id"], "msg": "used by a job"}],
        )
    repository.delete_dataset(session, row)
    return file_id


# --------------------------------------------------------------------------- jobs


def _default_checkpoints(
    session: Session, project_id: str, req: CreateFineTuningJob, spec: dict[str, Any]
) -> None:
    """One checkpoint per epoch unless the caller chose ``training.checkpoint_every``."""
    training = spec["training"]
    if "checkpoint_every" in training:
        return
    train = datasets_repository.get(session, project_id=project_id, dataset_id=req.training_file)
    if train is None:
        return  # the jobs service names the missing file
    try:
        training["checkpoint_every"] = mapping.steps_per_epoch(
            train_rows=train.rows, has_eval_file=bool(req.validation_file), training=training
        )
    except (TypeError, ValueError):
        return  # a malformed batch size: the spec parser names it


def _renamed(exc: InvalidInput, draft: mapping.SpecDraft) -> InvalidInput:
    errors = []
    for err in exc.errors:
        param = draft.param_for(list(err.get("loc", [])))
        errors.append({**err, "loc": ["body", *(param.split(".") if param else [])]})
    if not errors:
        return InvalidInput(exc.detail)
    first = errors[0]
    param = ".".join(str(p) for p in first["loc"][1:])
    line = f"line {first['line']}: " if "line" in first else ""
    return InvalidInput(f"{param}: {line}{first['msg']}", errors=errors)


def create_job(
    *,
    session: Session,
    settings: Settings,
    enqueues: PendingEnqueues,
    project_id: str,
    req: CreateFineTuningJob,
) -> Job:
    draft = mapping.draft_spec(req)
    _default_checkpoints(session, project_id, req, draft.spec)
    try:
        return jobs_service.create(
            session=session,
            settings=settings,
            enqueues=enqueues,
            project_id=project_id,
            body=draft.spec,
        )
    except InvalidInput as exc:
        raise _renamed(exc, draft) from exc


def get_job_or_raise(*, session: Session, project_id: str, job_id: str) -> Job:
    """A fine-tuning job is one of our ``distill`` jobs; edit and inject jobs are not shown."""
    try:
        job: Job | None = jobs_service.get_or_raise(
            session=session, project_id=project_id, job_id=job_id
        )
    except NotFound:
        job = None
    if job is None or job.kind != FINE_TUNING_KIND:
        raise NotFound(
            f"No fine-tuning job with id '{job_id}' in this project.",
            errors=[{"loc": ["path", "fine_tuning_job_id"], "msg": "not found"}],
        )
    return job


def job_out(*, session: Session, job: Job) -> FineTuningJob:
    tokens = None
    if job.status in jobs_service.TERMINAL:
        tokens = repository.trained_tokens(session, project_id=job.project_id, job_id=job.id)
    return mapping.job_out(job, trained_tokens=tokens)


def list_jobs(
    *,
    session: Session,
    project_id: str,
    after: str | None,
    limit: int,
    metadata: dict[str, str],
) -> tuple[builtins.list[Job], bool]:
    rows, next_cursor = jobs_service.list(
        session=session,
        project_id=project_id,
        cursor=after,
        limit=limit,
        status=None,
        kind=FINE_TUNING_KIND,
        metadata=metadata,
    )
    return rows, next_cursor is not None


def cancel_job(*, session: Session, project_id: str, job_id: str) -> Job:
    get_job_or_raise(session=session, project_id=project_id, job_id=job_id)
    return jobs_service.cancel(session=session, project_id=project_id, job_id=job_id)


def pause_job(*, session: Session, project_id: str, job_id: str) -> Job:
    get_job_or_raise(session=session, project_id=project_id, job_id=job_id)
    return jobs_service.pause(session=session, project_id=project_id, job_id=job_id)


def resume_job(*, session: Session, enqueues: PendingEnqueues, project_id: str, job_id: str) -> Job:
    get_job_or_raise(session=session, project_id=project_id, job_id=job_id)
    return jobs_service.resume(
        session=session, enqueues=enqueues, project_id=project_id, job_id=job_id
    )


def list_events(
    *, session: Session, project_id: str, job_id: str, after: str | None, limit: int
) -> tuple[builtins.list[FineTuningJobEvent], bool]:
    get_job_or_raise(session=session, project_id=project_id, job_id=job_id)
    before = mapping.parse_event_id(after) if after else None
    rows = repository.events_page(
        session, project_id=project_id, job_id=job_id, before_id=before, limit=limit
    )
    events = [
        FineTuningJobEvent(
            id=mapping.event_id(row.id),
            created_at=int(row.created_at.timestamp()),
            level=row.level if row.level in ("info", "warn", "error") else "info",  # type: ignore[arg-type]
            message=row.message,
            data=row.data or {},
        )
        for row in rows[:limit]
    ]
    return events, len(rows) > limit


_CHECKPOINT_METRICS = {"train/loss": "train_loss", "eval/loss": "full_valid_loss"}


def list_checkpoints(
    *, session: Session, project_id: str, job_id: str, after: str | None, limit: int
) -> tuple[builtins.list[FineTuningJobCheckpoint], bool]:
    """Newest first. Only the last few checkpoints are kept (docs/OPERATIONS.md), so they are
    paged in memory."""
    get_job_or_raise(session=session, project_id=project_id, job_id=job_id)
    rows: builtins.list[Checkpoint] = jobs_service.list_checkpoints(
        session=session, project_id=project_id, job_id=job_id
    )
    rows = sorted(rows, key=lambda c: c.step, reverse=True)
    if after:
        ids = [c.id for c in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    page = rows[:limit]
    values = repository.metrics_at_steps(
        session,
        project_id=project_id,
        job_id=job_id,
        keys=tuple(_CHECKPOINT_METRICS),
        steps=[c.step for c in page],
    )
    out = []
    for ckpt in page:
        metrics = {name: values.get((key, ckpt.step)) for key, name in _CHECKPOINT_METRICS.items()}
        out.append(
            FineTuningJobCheckpoint(
                id=ckpt.id,
                created_at=int(ckpt.created_at.timestamp()),
                fine_tuned_model_checkpoint=mapping.checkpoint_model_name(job_id, ckpt.step),
                fine_tuning_job_id=job_id,
                metrics=CheckpointMetrics(step=float(ckpt.step), **metrics),
                step_number=ckpt.step,
            )
        )
    return out, len(rows) > limit
