"""Pure translation between the OpenAI fine-tuning shapes and our job spec (docs/SPEC.md).

- ``method.type = "supervised"`` (or the legacy top-level ``hyperparameters``) is a ``ce`` job that
  fine-tunes ``model`` on the training file: our spec's teacher and student are both ``model``
  (the teacher is only evaluated at the end, for the result table).
- ``method.type = "distillation"`` (ours) distils ``distillation.teacher`` (default: ``model``)
  into ``model``, or into a student built from the teacher with ``distillation.student_init``.
- ``n_epochs`` -> ``training.epochs``, ``batch_size`` -> ``training.batch_size``,
  ``learning_rate_multiplier`` multiplies our base learning rate (``training.lr``, default 2e-4),
  ``seed`` -> ``training.seed``, ``suffix`` -> ``name``; ``"auto"`` keeps our defaults.
- Unless ``training.checkpoint_every`` is given, a checkpoint is written at the end of every
  epoch, as that API does.

Errors raised by our spec parser name spec fields (``body.dataset.train``); ``spec_loc_to_param``
renames them to the request's fields (``training_file``) so ``param`` names what the caller sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from api.errors import field_error
from api.jobs.spec import TrainingSpec
from api.openai_compat.schemas import (
    CreateFineTuningJob,
    FineTuningJob,
    Hyperparameters,
    HyperparametersOut,
    JobError,
    JobMethod,
)
from models import Job

BASE_LR: float = TrainingSpec.model_fields["lr"].default
_DEFAULTS = TrainingSpec()
STATUS = {
    "validating": "validating_files",
    "queued": "queued",
    "running": "running",
    # Still running until the worker stops between steps; then "cancelled".
    "cancelling": "running",
    "pausing": "running",  # until the worker has checkpointed; then "paused"
    "paused": "paused",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
_METHOD_KEYS = ("loss", "params", "data_mode")


def unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


@dataclass
class SpecDraft:
    """A spec built from a request, and where each spec field came from in that request."""

    spec: dict[str, Any]
    origins: list[tuple[tuple[str, ...], str]] = field(default_factory=list)

    def param_for(self, loc: list[Any]) -> str | None:
        """The request field a spec error location points at (longest known prefix)."""
        path = tuple(str(p) for p in (loc[1:] if loc and loc[0] == "body" else loc))
        best: tuple[tuple[str, ...], str] | None = None
        for prefix, param in self.origins:
            if path[: len(prefix)] == prefix and (best is None or len(prefix) > len(best[0])):
                best = (prefix, param)
        if best is None:
            return ".".join(path) or None
        rest = path[len(best[0]) :]
        return ".".join((best[1], *rest)) if rest else best[1]


def _method(req: CreateFineTuningJob) -> JobMethod:
    if req.method is None:
        return JobMethod.model_validate(
            {"type": "supervised", "supervised": {"hyperparameters": req.hyperparameters or {}}}
        )
    if req.hyperparameters is not None:
        raise field_error(
            ["body", "hyperparameters"],
            f"give hyperparameters inside method.{req.method.type}, not at the top level",
        )
    other = "distillation" if req.method.type == "supervised" else "supervised"
    if getattr(req.method, other) is not None:
        raise field_error(
            ["body", "method", other], f"method.type is '{req.method.type}': drop method.{other}"
        )
    if req.method.type == "distillation" and req.method.distillation is None:
        raise field_error(["body", "method", "distillation"], "required when type is distillation")
    return req.method


def _training(
    req: CreateFineTuningJob, hp: Hyperparameters, hp_param: str, draft: SpecDraft
) -> dict[str, Any]:
    training = dict(req.training or {})
    draft.origins.append((("training",), "training"))
    pairs = (("n_epochs", "epochs", hp.n_epochs), ("batch_size", "batch_size", hp.batch_size))
    for name, ours, value in pairs:
        if value == "auto":
            continue
        if ours in training:
            raise field_error(
                ["body", "training", ours], f"set either training.{ours} or {hp_param}.{name}"
            )
        training[ours] = value
        draft.origins.append((("training", ours), f"{hp_param}.{name}"))
    if hp.learning_rate_multiplier != "auto":
        base = training.get("lr", BASE_LR)
        if not isinstance(base, (int, float)) or isinstance(base, bool):
            raise field_error(["body", "training", "lr"], "must be a number")
        training["lr"] = float(base) * hp.learning_rate_multiplier
        draft.origins.append((("training", "lr"), f"{hp_param}.learning_rate_multiplier"))
    if req.seed is not None:
        if "seed" in training:
            raise field_error(["body", "training", "seed"], "set either training.seed or seed")
        training["seed"] = req.seed
        draft.origins.append((("training", "seed"), "seed"))
    return training


def draft_spec(req: CreateFineTuningJob) -> SpecDraft:
    """The job spec a create request stands for (checked afterwards by the jobs service)."""
    if req.integrations:
        raise field_error(["body", "integrations"], "integrations are not supported here")
    method = _method(req)
    draft = SpecDraft(spec={})
    draft.origins += [
        (("dataset", "train"), "training_file"),
        (("dataset", "eval"), "validation_file"),
        (("dataset",), "training_file"),
        (("name",), "suffix"),
        (("metadata",), "metadata"),
        (("evaluation",), "evaluation"),
        (("resources",), "resources"),
        (("kind",), "method.type"),
    ]
    spec: dict[str, Any] = {
        "kind": "distill",
        "name": req.suffix,
        "metadata": dict(req.metadata or {}),
        "dataset": {"train": req.training_file},
    }
    if req.validation_file:
        spec["dataset"]["eval"] = req.validation_file
    if method.type == "supervised":
        hp = method.supervised.hyperparameters if method.supervised else Hyperparameters()
        hp_param = "hyperparameters" if req.method is None else "method.supervised.hyperparameters"
        spec |= {
            "teacher": {"model": req.model},
            "student": {"model": req.model},
            "method": {"loss": "ce", "teacher_cache": "off"},
        }
        draft.origins += [
            (("teacher", "model"), "model"),
            (("student", "model"), "model"),
            (("method",), "method"),
        ]
    else:
        dist = method.distillation
        assert dist is not None
        hp, hp_param = dist.hyperparameters, "method.distillation.hyperparameters"
        clash = sorted(set(dist.options) & set(_METHOD_KEYS))
        if clash:
            raise field_error(
                ["body", "method", "distillation", "options", clash[0]],
                f"set {clash[0]} on method.distillation itself",
            )
        spec |= {
            "teacher": {"model": dist.teacher or req.model},
            "student": {"model": {"init": dist.student_init} if dist.student_init else req.model},
            "method": {
                **dist.options,
                "loss": dist.loss,
                "params": dist.params,
                "data_mode": dist.data_mode,
            },
        }
        base = "method.distillation"
        draft.origins += [
            (("teacher", "model"), f"{base}.teacher" if dist.teacher else "model"),
            (("student", "model"), f"{base}.student_init" if dist.student_init else "model"),
            (("student", "model", "init"), f"{base}.student_init"),
            (("method",), base),
            *[((("method", k), f"{base}.{k}")) for k in _METHOD_KEYS],
            *[((("method", k), f"{base}.options.{k}")) for k in dist.options],
        ]
    spec["training"] = _training(req, hp, hp_param, draft)
    for block in ("evaluation", "resources"):
        value = getattr(req, block)
        if value is not None:
            spec[block] = value
    draft.spec = spec
    return draft


def steps_per_epoch(*, train_rows: int, has_eval_file: bool, training: dict[str, Any]) -> int:
    """Optimizer steps in one epoch, as the recipe counts them (ceil over batches, then over
    gradient accumulation), after the held-out split the worker makes without an eval file."""
    batch = int(training.get("batch_size", _DEFAULTS.batch_size))
    accum = int(training.get("grad_accum", _DEFAULTS.grad_accum))
    rows = train_rows
    if not has_eval_file:
        rows -= max(1, int(train_rows * 0.1))  # DatasetRefs.eval_fraction's default
    micro = -(-max(rows, 1) // max(batch, 1))
    return max(1, -(-micro // max(accum, 1)))


def _hyperparameters(training: dict[str, Any]) -> HyperparametersOut:
    return HyperparametersOut(
        n_epochs=training.get("epochs", _DEFAULTS.epochs),
        batch_size=training.get("batch_size", _DEFAULTS.batch_size),
        learning_rate_multiplier=training.get("lr", BASE_LR) / BASE_LR,
    )


def _model_name(spec: dict[str, Any]) -> str:
    student = spec["student"]["model"]
    if isinstance(student, str):
        return student
    teacher = spec.get("teacher") or (spec.get("teachers") or [{}])[0]
    return str(teacher.get("model", ""))


def _method_out(spec: dict[str, Any], hp: HyperparametersOut) -> dict[str, Any]:
    method = spec["method"]
    if method["loss"] == "ce":
        return {"type": "supervised", "supervised": {"hyperparameters": hp.model_dump()}}
    teacher = spec.get("teacher") or (spec.get("teachers") or [{}])[0]
    student = spec["student"]["model"]
    return {
        "type": "distillation",
        "distillation": {
            "teacher": teacher.get("model"),
            "student_init": None if isinstance(student, str) else student.get("init"),
            "loss": method["loss"],
            "params": method.get("params", {}),
            "data_mode": method.get("data_mode", "offline"),
            "hyperparameters": hp.model_dump(),
        },
    }


def job_out(job: Job, *, trained_tokens: int | None) -> FineTuningJob:
    spec = job.spec
    hp = _hyperparameters(spec.get("training", {}))
    error = None
    if job.status == "failed":
        error = JobError(code="job_failed", message=job.error or "the job failed")
    return FineTuningJob(
        id=job.id,
        created_at=int(job.created_at.timestamp()),
        finished_at=unix(job.finished_at),
        error=error,
        fine_tuned_model=job.output_model_id,
        hyperparameters=hp,
        method=_method_out(spec, hp),
        model=_model_name(spec),
        organization_id=job.project_id,
        result_files=[],
        seed=int(spec.get("training", {}).get("seed", 0)),
        status=STATUS.get(job.status, "running"),  # type: ignore[arg-type]
        trained_tokens=trained_tokens,
        training_file=spec["dataset"]["train"],
        validation_file=spec["dataset"].get("eval"),
        metadata={k: str(v) for k, v in (job.metadata_ or {}).items()},
        user_provided_suffix=job.name,
    )


EVENT_PREFIX = "ftevent-"


def event_id(raw: int) -> str:
    return f"{EVENT_PREFIX}{raw}"


def parse_event_id(value: str) -> int:
    digits = value.removeprefix(EVENT_PREFIX)
    if not digits.isdigit():
        raise field_error(["query", "after"], f"'{value}' is not an event id of this API")
    return int(digits)


def checkpoint_model_name(job_id: str, step: int) -> str:
    return f"{job_id}:ckpt-step-{step}"
