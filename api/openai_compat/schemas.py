"""Request and response shapes of the OpenAI fine-tuning API (files, fine_tuning.job, its events
and checkpoints), as the official ``openai`` Python package sends and reads them.

Our extension: ``method.type = "distillation"`` with a ``distillation`` block carrying the teacher,
the KD loss and its parameters; and the top-level ``training`` / ``evaluation`` / ``resources``
objects of our own job spec (docs/SPEC.md), sent through the SDK's ``extra_body``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

# --------------------------------------------------------------------------- errors


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """``{"error": {...}}``: the SDK reads ``message``, ``type``, ``param`` and ``code`` from it."""

    error: OpenAIError


# --------------------------------------------------------------------------- files


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="unix seconds")
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["processed"] = Field(
        default="processed", description="validated line by line at upload, so always processed"
    )
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# --------------------------------------------------------------------------- job requests


class _AutoOr:
    """``"auto"`` or a number in range, checked by one validator so that an error names the
    field itself (a plain union would report each of its members)."""

    def __init__(self, kind: type[int] | type[float], low: float, high: float) -> None:
        self.kind, self.low, self.high = kind, low, high

    def __call__(self, value: Any) -> Any:
        if value == "auto":
            return value
        integer = self.kind is int
        what = "an integer" if integer else "a number"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (integer and not float(value).is_integer()):
            raise ValueError(f"must be 'auto' or {what}")
        too_low = value < self.low if integer else value <= self.low
        if too_low or value > self.high:
            opening = "[" if integer else "("
            raise ValueError(f"must be 'auto' or {what} in {opening}{self.low:g}, {self.high:g}]")
        return self.kind(value)

    def json_schema(self) -> WithJsonSchema:
        number: dict[str, Any] = {"type": "integer" if self.kind is int else "number"}
        number |= {"minimum" if self.kind is int else "exclusiveMinimum": self.low}
        number["maximum"] = self.high
        return WithJsonSchema({"anyOf": [{"type": "string", "enum": ["auto"]}, number]})


_EPOCHS, _BATCH = _AutoOr(int, 1, 1000), _AutoOr(int, 1, 4096)
_LR_MULTIPLIER = _AutoOr(float, 0, 1000)


class _Strict(BaseModel):
    """Unknown fields are refused, so a typo is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    n_epochs: Annotated[Any, AfterValidator(_EPOCHS), _EPOCHS.json_schema()] = "auto"
    batch_size: Annotated[Any, AfterValidator(_BATCH), _BATCH.json_schema()] = "auto"
    learning_rate_multiplier: Annotated[
        Any, AfterValidator(_LR_MULTIPLIER), _LR_MULTIPLIER.json_schema()
    ] = "auto"


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DistillationMethod(_Strict):
    """Our method type: distil ``teacher`` into the job's ``model`` (or into a student built
    from the teacher with ``student_init``)."""

    teacher: str | None = Field(
        default=None, description="registered model id or allowed path; default: the job's model"
    )
    student_init: dict[str, Any] | None = Field(
        default=None,
        description="build the student from the teacher: {from_teacher_layers: every_2nd} or "
        "{config: {...}} (the spec's student.model.init); the job's model is then the teacher",
    )
    loss: str = Field(default="fkl", description="a KD loss of docs/SPEC.md (fkl, jsd, …)")
    params: dict[str, float] = Field(default_factory=dict)
    data_mode: str = "offline"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the rest of the spec's method block: lmbda, generation, teacher_cache, …",
    )


class JobMethod(_Strict):
    type: Literal["supervised", "distillation"]
    supervised: SupervisedMethod | None = None
    distillation: DistillationMethod | None = None


class CreateFineTuningJob(_Strict):
    model: str = Field(min_length=1, description="registered model id or allowed model path")
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = Field(
        default=None, description="legacy: same as method.supervised.hyperparameters"
    )
    method: JobMethod | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(default=None, max_length=16)
    integrations: list[dict[str, Any]] | None = Field(
        default=None, description="accepted for compatibility; must be empty"
    )
    training: dict[str, Any] | None = Field(
        default=None, description="extension: the spec's training block (max_steps, lr, …)"
    )
    evaluation: dict[str, Any] | None = Field(
        default=None, description="extension: the spec's evaluation block"
    )
    resources: dict[str, Any] | None = Field(
        default=None, description="extension: the spec's resources block (queue)"
    )


# --------------------------------------------------------------------------- job responses


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    estimated_finish: int | None = None
    error: JobError | None
    fine_tuned_model: str | None
    hyperparameters: HyperparametersOut
    method: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal[
        "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"
    ]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, str] | None
    user_provided_suffix: str | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any]
    type: Literal["message", "metrics"] = "message"


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool
