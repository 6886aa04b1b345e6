"""``student.model.from_checkpoint``: a new distill job whose student starts from another job's
checkpoint weights. Resolved here (same project only, the checkpoint's hash verified now and
again by the worker), built by ``workers/student_from_checkpoint.py``.

The resolved student is ``{"from_checkpoint": {...}, "base": <the source job's student>}``:
the base (a model path or an init recipe, followed through chains of such jobs) gives the
architecture; the checkpoint's ``model.safetensors`` gives the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.config import get_settings
from api.errors import field_error
from api.jobs import repository
from api.jobs.spec import CheckpointStartRef
from api.jobs.spec_method import CROSS_VOCAB_LOSSES
from api.storage import open_store
from ml.distillation.checkpointing import MODEL_FILE, directory_sha256
from models import Checkpoint, Job

LOC: list[str | int] = ["body", "student", "model", "from_checkpoint"]


def resolve_checkpoint_start(
    session: Session,
    project_id: str,
    ref: CheckpointStartRef,
    teacher: dict[str, Any],
    loss: str,
) -> dict[str, Any]:
    source_ref = ref.from_checkpoint
    source = find_source(session, project_id, source_ref.job)
    if loss in CROSS_VOCAB_LOSSES:
        raise field_error(LOC, f"'{loss}' needs a student model with its own tokenizer, not a "
                          "checkpoint start")  # fmt: skip
    source_loss = source.spec["method"]["loss"]
    if source.spec["student"].get("lora") or source_loss in CROSS_VOCAB_LOSSES:
        raise field_error([*LOC, "job"], "starting from a LoRA or cross-vocabulary job's "
                          "checkpoint is not supported: its checkpoint holds adapters or "
                          "projectors, not a plain student")  # fmt: skip
    checkpoint = _checkpoint(session, source.id, source_ref.step)
    path = Path(checkpoint.path)
    if not _checkpoint_intact(path, checkpoint.sha256):
        msg = f"the checkpoint at step {checkpoint.step} of {source.id} is missing or does not "
        raise field_error([*LOC, "step"], msg + "match its recorded sha256")
    source_student = source.resolved["student"]
    base = source_student.get("base", source_student)
    source_teacher = source.resolved["teacher"]
    # The recipe's rule for the student's tokenizer (a remote teacher's job reads with its own).
    own = "path" in base and (source_loss == "ce" or "remote" in source_teacher)
    tokenizer = {k: (base if own else source_teacher)[k] for k in ("vocab_size",
                 "tokenizer_sha256", "path")}  # fmt: skip
    if loss != "ce" and (
        tokenizer["vocab_size"] != teacher["vocab_size"]
        or tokenizer["tokenizer_sha256"] != teacher["tokenizer_sha256"]
    ):
        msg = f"{source.id}'s student reads with another tokenizer than this job's teacher"
        raise field_error([*LOC, "job"], f"{msg}, and '{loss}' needs one vocabulary")
    return {
        "from_checkpoint": {
            "job_id": source.id,
            "step": checkpoint.step,
            "checkpoint_id": checkpoint.id,
            "path": str(path),
            "sha256": checkpoint.sha256,
            "teacher_path": source_teacher.get("path"),
            "tokenizer_path": tokenizer["path"],
        },
        "base": base,
        "vocab_size": tokenizer["vocab_size"],
        "tokenizer_sha256": tokenizer["tokenizer_sha256"],
    }


def _checkpoint_intact(recorded: Path, sha256: str) -> bool:
    """Hashed here when this host holds the checkpoint. With shared storage and no local copy
    (a worker on another host wrote it), its weights must be in the store: the worker checks
    the sha256 when it fetches it, so the API never downloads checkpoints to validate a spec."""
    store = open_store(get_settings())
    local = store.localize(recorded)
    if (local / MODEL_FILE).is_file():
        return directory_sha256(local)[0] == sha256
    try:
        return store.has(local / MODEL_FILE)
    except ValueError:  # outside the store's layout
        return False


def find_source(session: Session, project_id: str, job_id: str) -> Job:
    source = repository.get(session, project_id=project_id, job_id=job_id)
    if source is None or source.kind != "distill":
        raise field_error([*LOC, "job"], f"no distill job {job_id} in this project")
    return source


def _checkpoint(session: Session, job_id: str, step: int | str) -> Checkpoint:
    rows = repository.list_checkpoints(session, job_id=job_id)  # the job is the caller's
    if not rows:
        raise field_error([*LOC, "job"], f"{job_id} has no checkpoint (yet)")
    if step == "latest":
        return rows[-1]
    for row in rows:
        if row.step == step:
            return row
    steps = ", ".join(str(r.step) for r in rows)
    raise field_error([*LOC, "step"], f"{job_id} has no checkpoint at step {step}; it has {steps}")
