"""The job spec (DESIGN.md "A job spec"): parsed strictly, so a typo is a 422 naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SUPPORTED_LOSSES = ("ce", "fkl")
# Named in the design and accepted by name, but not runnable yet: a clear 422, not a crash.
PLANNED_LOSSES = (
    "rkl", "jsd", "skl", "srkl", "tvd", "akl", "atkd", "taid", "dskd", "uld", "mined",
)  # fmt: skip
SUPPORTED_DATA_MODES = ("offline",)
PLANNED_DATA_MODES = ("seqkd", "onpolicy", "opd", "skd")
LAYER_SHORTHANDS = {"every_layer": 1, "every_2nd": 2, "every_3rd": 3, "every_4th": 4}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInit(Strict):
    from_teacher_layers: str | int | None = Field(
        default=None, description="every_2nd, every_3rd, … or k: copy layers 0, k, 2k, …"
    )
    config: dict[str, Any] | None = Field(
        default=None, description="LLaMA config overrides: hidden_size, num_hidden_layers, …"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelInit:
        if (self.from_teacher_layers is None) == (self.config is None):
            raise ValueError("give exactly one of from_teacher_layers or config")
        return self

    @field_validator("from_teacher_layers")
    @classmethod
    def _stride(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return None
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be a positive layer stride")
            return value
        if value not in LAYER_SHORTHANDS:
            raise ValueError(f"must be one of {', '.join(LAYER_SHORTHANDS)} or an integer")
        return value

    @property
    def stride(self) -> int | None:
        v = self.from_teacher_layers
        return LAYER_SHORTHANDS[v] if isinstance(v, str) else v


class ModelInitRef(Strict):
    init: ModelInit


class TeacherSpec(Strict):
    model: str = Field(min_length=1, description="registered model id, or an allowed local path")


class StudentSpec(Strict):
    model: str | ModelInitRef = Field(
        default_factory=lambda: ModelInitRef(init=ModelInit(from_teacher_layers="every_2nd"))
    )
    lora: dict[str, Any] | None = None

    @field_validator("lora")
    @classmethod
    def _no_lora_yet(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            raise ValueError("LoRA students are not available yet; set lora to null")
        return value


class DatasetRefs(Strict):
    train: str = Field(min_length=1)
    eval: str | None = None
    eval_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="held out from train when no eval set is given"
    )


class MethodSpec(Strict):
    loss: str = "fkl"
    params: dict[str, float] = Field(default_factory=dict)
    data_mode: str = "offline"
    teacher_cache: Literal["auto", "off"] = "auto"

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value in SUPPORTED_LOSSES:
            return value
        if value in PLANNED_LOSSES:
            raise ValueError(
                f"'{value}' is not available yet; available: {', '.join(SUPPORTED_LOSSES)}"
            )
        raise ValueError(f"unknown loss '{value}'; available: {', '.join(SUPPORTED_LOSSES)}")

    @field_validator("data_mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value in SUPPORTED_DATA_MODES:
            return value
        known = ", ".join(SUPPORTED_DATA_MODES)
        if value in PLANNED_DATA_MODES:
            raise ValueError(f"'{value}' is not available yet; available: {known}")
        raise ValueError(f"unknown data mode '{value}'; available: {known}")

    @field_validator("params")
    @classmethod
    def _known_params(cls, value: dict[str, float]) -> dict[str, float]:
        allowed = {"temperature", "alpha_ce"}
        for key, v in value.items():
            if key not in allowed:
                raise ValueError(
                    f"unknown parameter '{key}'; allowed: {', '.join(sorted(allowed))}"
                )
            if key == "temperature" and not 0 < v <= 100:
                raise ValueError("temperature must be in (0, 100]")
            if key == "alpha_ce" and not 0 <= v <= 1:
                raise ValueError("alpha_ce must be in [0, 1]")
        return value


class TrainingSpec(Strict):
    epochs: int = Field(default=1, ge=1, le=1000)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1, le=4096)
    grad_accum: int = Field(default=1, ge=1, le=1024)
    lr: float = Field(default=2e-4, gt=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    max_length: int = Field(default=512, ge=8, le=32768)
    seed: int = 0
    checkpoint_every: int = Field(default=200, ge=0)
    eval_every: int = Field(default=0, ge=0)


class EvaluationSpec(Strict):
    max_examples: int = Field(default=64, ge=1, le=100000)
    max_new_tokens: int = Field(default=32, ge=1, le=4096)


class ResourcesSpec(Strict):
    queue: Literal["cpu", "gpu"] = "cpu"
    nproc: int = Field(
        default=1, ge=1, le=1, description="multi-process runs are not available yet"
    )


class DistillSpec(Strict):
    kind: Literal["distill"]
    name: Annotated[str | None, Field(max_length=200)] = None
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    teacher: TeacherSpec
    student: StudentSpec = Field(default_factory=StudentSpec)
    dataset: DatasetRefs
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


JOB_KINDS = ("distill", "edit", "inject")
