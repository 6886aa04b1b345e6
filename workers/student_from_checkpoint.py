"""The starting student of a ``from_checkpoint`` job (api/jobs/checkpoint_start.py): the source
job's student architecture, built as that job built it, with the checkpoint's weights loaded
strictly, saved as a Hugging Face directory that the recipe then loads like any student path.

The checkpoint's sha256 is recomputed before its weights are read: a checkpoint changed or
deleted since the API accepted the job fails the job with that reason."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from api.config import Settings
from ml.distillation.checkpointing import MODEL_FILE, directory_sha256
from ml.distillation.student_init import build_student
from ml.loading import load_causal_lm, load_tokenizer, save_model
from workers.runtime import job_dir


def starting_student_dir(settings: Settings, job_id: str, student: dict[str, Any]) -> Path:
    """The directory holding the starting student, made once per job (a resumed attempt
    reuses it, and then resumes from its own checkpoints anyway)."""
    out = job_dir(settings, job_id) / "start_student"
    if (out / "config.json").is_file():
        return out
    source = student["from_checkpoint"]
    path = Path(source["path"])
    if not (path / MODEL_FILE).is_file() or directory_sha256(path)[0] != source["sha256"]:
        raise ValueError(
            f"the checkpoint at step {source['step']} of {source['job_id']} is missing or no "
            "longer matches the sha256 recorded when this job was created"
        )
    base = student["base"]
    tokenizer = load_tokenizer(source["tokenizer_path"])
    init = base.get("init")
    # An init recipe takes its layers or its vocabulary size from the source job's teacher.
    teacher = load_causal_lm(source["teacher_path"]) if init else None
    model = build_student(
        student_path=Path(base["path"]) if "path" in base else None,
        student_init=init,
        teacher=teacher,
        tokenizer=tokenizer,
    )
    from safetensors.torch import load_model

    missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=True)
    if missing or unexpected:  # strict raises first; kept for a loader that only reports
        raise ValueError(f"checkpoint does not fit the student: {missing} {unexpected}")
    staging = out.with_name(f".start_student.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, tokenizer, staging)
    os.replace(staging, out)
    return out
