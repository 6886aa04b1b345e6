"""Resolves a spec's references (models, datasets) inside the caller's project, checking what is
cheap to check now so that a bad spec is a 422 naming the field, never a crash in the worker."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api.config import Settings
from api.datasets import repository as datasets
from api.errors import field_error
from api.jobs.spec import DistillSpec, ModelInitRef
from api.registry import repository as registry
from api.registry.inspection import inspect_or_reject
from api.registry.paths import confine_model_dir

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


def resolve_dataset(
    session: Session, settings: Settings, project_id: str, ref: str, loc: list[str | int]
) -> dict[str, Any]:
    row = datasets.get(session, project_id=project_id, dataset_id=ref)
    if row is None:
        raise field_error(loc, f"dataset {ref} does not exist in this project")
    return {
        "id": row.id,
        "path": str(settings.resolved_data_root / row.path),
        "sha256": row.sha256,
        "rows": row.rows,
        "format": row.format,
    }


def resolve_distill(
    session: Session, settings: Settings, project_id: str, spec: DistillSpec
) -> dict[str, Any]:
    teacher = resolve_model(
        session, settings, project_id, spec.teacher.model, ["body", "teacher", "model"]
    )
    student: dict[str, Any]
    student_ref = spec.student.model
    if isinstance(student_ref, ModelInitRef):
        init = student_ref.init
        student = {"init": init.model_dump(exclude_none=True)}
        stride = init.stride
        if stride is not None:
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
    else:
        student = resolve_model(
            session, settings, project_id, student_ref, ["body", "student", "model"]
        )
        same_vocab = student["vocab_size"] == teacher["vocab_size"] and (
            student["tokenizer_sha256"] == teacher["tokenizer_sha256"]
        )
        if not same_vocab and spec.method.loss != "ce":
            raise field_error(
                ["body", "student", "model"],
                f"the student's tokenizer differs from the teacher's, and '{spec.method.loss}' "
                "needs the same vocabulary (cross-vocabulary methods are not available yet)",
            )
    data = {"train": resolve_dataset(session, settings, project_id, spec.dataset.train,
                                     ["body", "dataset", "train"])}  # fmt: skip
    if spec.dataset.eval:
        data["eval"] = resolve_dataset(
            session, settings, project_id, spec.dataset.eval, ["body", "dataset", "eval"]
        )
    return {"teacher": teacher, "student": student, "datasets": data}
