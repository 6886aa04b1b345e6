"""Resolves a spec's references (models, datasets) inside the caller's project, checking what is
cheap to check now so that a bad spec is a 422 naming the field, never a crash in the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from transformers import LlamaConfig

from api.config import Settings
from api.datasets import repository as datasets
from api.errors import InvalidInput, field_error
from api.jobs.checkpoint_start import resolve_checkpoint_start
from api.jobs.remote_teacher_rules import check_remote_student, resolve_remote_teacher
from api.jobs.spec import CheckpointStartRef, DistillSpec, ModelInitRef
from api.jobs.spec_method import CROSS_VOCAB_LOSSES
from api.registry import repository as registry
from api.registry.inspection import inspect_or_reject
from api.registry.paths import confine_model_dir
from api.storage import open_store
from ml.distillation.lora import linear_module_names_for_config, linear_module_names_for_dir

# Layer copying needs a LLaMA-style decoder (model.layers): ml.loading.init_student_from_teacher.
LAYER_COPY_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def resolve_model(
    session: Session, settings: Settings, project_id: str, ref: str, loc: list[str | int]
) -> dict[str, Any]:
    if ref.startswith("mdl_"):
        row = registry.get(session, project_id=project_id, model_id=ref)
        if row is None:
            raise field_error(loc, f"model {ref} does not exist in this project")
        return {
            "id": row.id,
            "path": row.path,
            "model_type": row.model_type,
            "vocab_size": row.vocab_size,
            "num_layers": row.num_layers,
            "tokenizer_sha256": row.tokenizer_sha256,
            "weights_sha256": row.weights_sha256,
        }
    path = confine_model_dir(ref, settings.resolved_model_roots, loc=loc)
    info = inspect_or_reject(path, loc=loc)
    return {
        "id": None,
        "path": str(path),
        "model_type": info.model_type,
        "vocab_size": info.vocab_size,
        "num_layers": info.num_layers,
        "tokenizer_sha256": info.tokenizer_sha256,
        "weights_sha256": info.weights_sha256,
    }


TRAINING_FORMATS = ("prompt_response", "chat")


def resolve_dataset(
    session: Session,
    settings: Settings,
    project_id: str,
    ref: str,
    loc: list[str | int],
    formats: tuple[str, ...] = TRAINING_FORMATS,
) -> dict[str, Any]:
    """The dataset's id, path, hash, rows and format; ``formats`` are those this field takes."""
    row = datasets.get(session, project_id=project_id, dataset_id=ref)
    if row is None:
        raise field_error(loc, f"dataset {ref} does not exist in this project")
    if row.format not in formats:
        raise field_error(
            loc, f"dataset {ref} holds {row.format} lines; this field needs " + " or ".join(formats)
        )
    # Uploaded through another API host: fetched from the shared store (checked against its
    # sha256) for the checks that read it here (routing field, dry run); a no-op on one disk.
    path = open_store(settings).ensure_file(settings.resolved_data_root / row.path, row.sha256)
    return {
        "id": row.id,
        "path": str(path),
        "sha256": row.sha256,
        "rows": row.rows,
        "format": row.format,
    }


def resolve_distill(
    session: Session, settings: Settings, project_id: str, spec: DistillSpec
) -> dict[str, Any]:
    teachers = _resolve_teachers(session, settings, project_id, spec)
    teacher = teachers[0]  # the primary: its tokenizer and layers shape the student
    student = _resolve_student(session, settings, project_id, spec, teacher)
    if spec.student.lora is not None:  # a checkpoint start has its source's architecture
        _check_lora_targets(spec, teacher, student.get("base", student))
    data = {"train": resolve_dataset(session, settings, project_id, spec.dataset.train,
                                     ["body", "dataset", "train"])}  # fmt: skip
    if spec.dataset.eval:
        data["eval"] = resolve_dataset(
            session, settings, project_id, spec.dataset.eval, ["body", "dataset", "eval"]
        )
    if spec.routing is not None:
        routes = {t.route for t in spec.all_teachers}
        _check_routing_field(Path(data["train"]["path"]), spec.routing.field, routes)
    return {"teacher": teacher, "teachers": teachers, "student": student, "datasets": data}


def _resolve_teachers(
    session: Session, settings: Settings, project_id: str, spec: DistillSpec
) -> list[dict[str, Any]]:
    several = spec.teachers is not None
    out: list[dict[str, Any]] = []
    for i, ref in enumerate(spec.all_teachers):
        loc: list[str | int] = ["body", "teachers", i, "model"] if several else [
            "body", "teacher", "model"]  # fmt: skip
        if ref.remote is not None:
            resolved = resolve_remote_teacher(settings, spec, ref.remote, [*loc[:-1], "remote"])
            out.append({**resolved, "weight": ref.weight, "route": ref.route})
            continue
        assert ref.model is not None
        resolved = resolve_model(session, settings, project_id, ref.model, loc)
        if out and (
            resolved["vocab_size"] != out[0]["vocab_size"]
            or resolved["tokenizer_sha256"] != out[0]["tokenizer_sha256"]
        ):
            raise field_error(loc, "every teacher must share the first teacher's tokenizer")
        out.append({**resolved, "weight": ref.weight, "route": ref.route})
    return out


def _resolve_student(
    session: Session,
    settings: Settings,
    project_id: str,
    spec: DistillSpec,
    teacher: dict[str, Any],
) -> dict[str, Any]:
    student_ref = spec.student.model
    if "remote" in teacher:  # the student's tokenizer is the vocabulary the teacher shares
        ref = check_remote_student(spec)
        return resolve_model(session, settings, project_id, ref, ["body", "student", "model"])
    if isinstance(student_ref, CheckpointStartRef):
        return resolve_checkpoint_start(session, project_id, student_ref, teacher, spec.method.loss)
    if not isinstance(student_ref, ModelInitRef):
        student = resolve_model(
            session, settings, project_id, student_ref, ["body", "student", "model"]
        )
        same_vocab = student["vocab_size"] == teacher["vocab_size"] and (
            student["tokenizer_sha256"] == teacher["tokenizer_sha256"]
        )
        if not same_vocab and spec.method.loss not in ("ce", *CROSS_VOCAB_LOSSES):
            raise field_error(
                ["body", "student", "model"],
                f"the student's tokenizer differs from the teacher's, and '{spec.method.loss}' "
                "needs the same vocabulary: use a cross-vocabulary loss "
                f"({', '.join(CROSS_VOCAB_LOSSES)})",
            )
        return student
    if spec.method.loss in CROSS_VOCAB_LOSSES:
        raise field_error(
            ["body", "student", "model"],
            f"'{spec.method.loss}' needs a student model with its own tokenizer: a registered "
            "model id or a path, not an init recipe",
        )
    init = student_ref.init
    student = {"init": init.model_dump(exclude_none=True)}
    stride = init.stride
    if stride is None:
        return student
    loc: list[str | int] = ["body", "student", "model", "init", "from_teacher_layers"]
    if teacher["model_type"] not in LAYER_COPY_TYPES:
        raise field_error(
            loc,
            f"layer copying needs a LLaMA-style teacher ({', '.join(LAYER_COPY_TYPES)}), "
            f"not '{teacher['model_type']}'",
        )
    layers = teacher["num_layers"] or 0
    if stride > layers:
        raise field_error(loc, f"stride {stride} exceeds the teacher's {layers} layers")
    student["init"]["from_teacher_layers"] = stride
    return student


def _check_lora_targets(
    spec: DistillSpec, teacher: dict[str, Any], student: dict[str, Any]
) -> None:
    """The student's linear module names, from a model built on the meta device (no weights)."""
    assert spec.student.lora is not None
    loc: list[str | int] = ["body", "student", "lora", "target_modules"]
    init = student.get("init") or {}
    try:
        if "path" in student:
            names = linear_module_names_for_dir(Path(student["path"]))
        elif "config" in init:
            config = LlamaConfig(vocab_size=teacher["vocab_size"], **init["config"])
            names = linear_module_names_for_config(config)
        else:
            names = linear_module_names_for_dir(Path(teacher["path"]))
    except (TypeError, ValueError) as exc:
        raise field_error(["body", "student", "model"], f"cannot build the student: {exc}") from exc
    missing = sorted(set(spec.student.lora.target_modules) - names)
    if missing:
        raise field_error(
            loc,
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a linear module "
            f"of the student; available: {', '.join(sorted(names))}",
        )


def _check_routing_field(path: Path, field: str, routes: set[str | None]) -> None:
    """Every training line must name a teacher through ``field``; the first bad lines are
    reported by number."""
    errors: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            value = json.loads(line).get(field)
            if value not in routes:
                msg = (
                    f"has no '{field}' field" if value is None
                    else f"'{field}' is {value!r}, which no teacher's route matches"
                )  # fmt: skip
                errors.append({"loc": ["body", "routing", "field"], "line": number, "msg": msg})
                if len(errors) == 10:
                    break
    if errors:
        first = errors[0]
        raise InvalidInput(
            f"body.routing.field: dataset line {first['line']} {first['msg']}", errors=errors
        )
