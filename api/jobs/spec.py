"""The job spec (DESIGN.md "A job spec"): parsed strictly, so a typo is a 422 naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from api.jobs.spec_method import CROSS_VOCAB_LOSSES, MethodSpec, Strict

LAYER_SHORTHANDS = {"every_layer": 1, "every_2nd": 2, "every_3rd": 3, "every_4th": 4}


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


class CheckpointSource(Strict):
    job: str = Field(min_length=1, description="a distill job of this project")
    step: Annotated[int, Field(ge=0)] | Literal["latest"] = Field(
        default="latest", description="a checkpointed step of that job, or its newest one"
    )


class CheckpointStartRef(Strict):
    """Start the student from another job's verified checkpoint weights (docs/SPEC.md)."""

    from_checkpoint: CheckpointSource


class RemoteTeacherSpec(Strict):
    """A teacher served by an inference server, asked for top-k log-probabilities per position
    (docs/SPEC.md "teacher.remote"); the host must be in DISTILL_REMOTE_TEACHER_ALLOWED_HOSTS."""

    url: str = Field(min_length=1, max_length=2000, description="http(s) root of the server")
    protocol: Literal["distill", "openai"] = Field(
        default="distill", description="distill: /v1/score; openai: /v1/completions echo"
    )
    top_k: int = Field(default=20, ge=1, le=1000, description="log-probabilities per position")
    model: str | None = Field(
        default=None, min_length=1, max_length=200, description="openai: the served model name"
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="the worker's environment variable holding the key (never the key itself)",
    )
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="per request")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: name an api_key_env instead")
        return value

    @model_validator(mode="after")
    def _openai_model(self) -> RemoteTeacherSpec:
        if self.protocol == "openai" and self.model is None:
            raise ValueError("model: the openai protocol needs the served model's name")
        return self


class TeacherSpec(Strict):
    model: str | None = Field(
        default=None, min_length=1, description="registered model id, or an allowed local path"
    )
    remote: RemoteTeacherSpec | None = Field(
        default=None, description="instead of model: a teacher behind an inference server"
    )
    weight: float = Field(default=1.0, ge=0, description="mixture weight among `teachers`")
    route: str | None = Field(
        default=None, description="with `routing`: the value of the routing field it teaches"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if (self.model is None) == (self.remote is None):
            raise ValueError("give exactly one of model or remote")
        return self


class RoutingSpec(Strict):
    field: str = Field(min_length=1, description="the dataset line's field naming its teacher")


class LoraSpec(Strict):
    r: int = Field(default=16, ge=1, le=1024)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )
    merge: bool = Field(default=True, description="save merged weights (else base + adapter)")


class StudentSpec(Strict):
    model: str | ModelInitRef | CheckpointStartRef = Field(
        default_factory=lambda: ModelInitRef(init=ModelInit(from_teacher_layers="every_2nd"))
    )
    lora: LoraSpec | None = None


class DatasetRefs(Strict):
    train: str = Field(min_length=1)
    eval: str | None = None
    eval_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="held out from train when no eval set is given"
    )


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
    kd_chunk_tokens: int = Field(
        default=0, ge=0, description="> 0: chunked KD that never holds full-vocab probabilities"
    )


class EvaluationSpec(Strict):
    max_examples: int = Field(default=64, ge=1, le=100000)
    max_new_tokens: int = Field(default=32, ge=1, le=4096)


MAX_NPROC = 8
# 0..9, higher runs first among the project's own jobs (fair share between projects first).
Priority = Annotated[int, Field(ge=0, le=9, description="0..9, higher first within the project")]


class ResourcesSpec(Strict):
    """The resource class (a queue that workers listen to with ``-Q``) and the processes the
    job needs. A distill job with ``nproc > 1`` trains in that many processes of one machine
    (torch.distributed: gloo on ``cpu``, nccl on ``gpu-multi``; workers/distributed_launch.py);
    only a worker whose DISTILL_WORKER_MAX_NPROC covers it takes the job. ``gpu`` stays one
    process (one device); ``gpu-multi`` is for 2 or more. ``strategy`` says how the processes
    share the student: ``ddp`` replicates it, ``fsdp`` shards its weights, gradients and
    optimizer state (for students that do not fit one device; ml/distillation/sharding.py).
    Several machines (``nnodes > 1``) would need several workers started together (gang
    scheduling), which does not exist yet."""

    queue: Literal["cpu", "gpu", "gpu-multi"] = "cpu"
    nproc: int = Field(default=1, ge=1, le=MAX_NPROC, validate_default=True)
    nnodes: int = Field(default=1, ge=1, description="machines; only 1 is available today")
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: every process holds the whole student; fsdp: each holds a shard",
    )

    @field_validator("strategy")
    @classmethod
    def _fsdp_needs_processes(cls, value: str, info: ValidationInfo) -> str:
        if value == "fsdp" and info.data.get("nproc", 2) < 2:
            raise ValueError("fsdp shards the student over processes: set nproc to 2 or more")
        return value

    @field_validator("nproc")
    @classmethod
    def _nproc_fits_queue(cls, value: int, info: ValidationInfo) -> int:
        queue = info.data.get("queue")  # absent when the queue itself was invalid
        if queue == "gpu-multi" and value < 2:
            raise ValueError("the gpu-multi queue is for jobs with nproc of 2 or more")
        if queue == "gpu" and value != 1:
            raise ValueError("nproc above 1 on GPUs needs queue 'gpu-multi', not 'gpu'")
        return value

    @field_validator("nnodes")
    @classmethod
    def _one_node(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                "multi-node jobs are not available yet (they need several workers started "
                "together); use nnodes 1 with up to 8 processes (nproc)"
            )
        return value


class DistillSpec(Strict):
    kind: Literal["distill"]
    name: Annotated[str | None, Field(max_length=200)] = None
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    teacher: TeacherSpec | None = None
    teachers: list[TeacherSpec] | None = Field(default=None, min_length=2, max_length=8)
    routing: RoutingSpec | None = None
    student: StudentSpec = Field(default_factory=StudentSpec)
    dataset: DatasetRefs
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: Priority = 5

    @model_validator(mode="after")
    def _chunking(self) -> DistillSpec:
        if self.method.loss in CROSS_VOCAB_LOSSES and self.teachers is not None:
            raise ValueError(f"'{self.method.loss}' distils from one teacher")
        if self.training.kd_chunk_tokens and (
            self.method.loss in CROSS_VOCAB_LOSSES
            or self.teachers is not None
            or self.method.data_mode == "opd"
            or self.method.teacher_cache not in ("auto", "off")
        ):
            raise ValueError(
                "training.kd_chunk_tokens works with one live same-vocabulary teacher: not "
                "with several teachers, opd, teacher_cache settings or a cross-vocabulary loss"
            )
        return self

    @model_validator(mode="after")
    def _processes(self) -> DistillSpec:
        # Each rank would need its own client of the server: not built (workers/distill_run.py).
        if self.resources.nproc > 1 and any(t.remote for t in self.all_teachers):
            raise ValueError("a remote teacher trains in one process: set resources.nproc to 1")
        if self.resources.strategy == "fsdp":
            # Every sharded forward is a collective (ml/distillation/recipe_config.py says why).
            if self.method.data_mode not in ("offline", "seqkd"):  # seqkd generates before
                raise ValueError(
                    "resources.strategy fsdp needs method.data_mode 'offline' or 'seqkd'"
                )
            if self.student.lora is not None:
                raise ValueError("resources.strategy fsdp trains a full student: not with lora")
            if self.training.kd_chunk_tokens:
                raise ValueError("resources.strategy fsdp needs training.kd_chunk_tokens 0")
            if self.method.loss in CROSS_VOCAB_LOSSES:
                raise ValueError("resources.strategy fsdp needs a same-vocabulary loss")
        return self

    @model_validator(mode="after")
    def _teachers(self) -> DistillSpec:
        if (self.teacher is None) == (self.teachers is None):
            raise ValueError("give exactly one of teacher or teachers")
        if self.teachers is None:
            if self.routing is not None:
                raise ValueError("routing needs several teachers")
            return self
        if self.method.data_mode != "offline" or self.method.teacher_cache not in ("auto", "off"):
            raise ValueError(
                "several teachers work with data_mode 'offline' and no teacher_cache settings"
            )
        if self.routing is not None:
            routes = [t.route for t in self.teachers]
            if any(r is None for r in routes) or len(set(routes)) != len(routes):
                raise ValueError("with routing, every teacher needs its own distinct route")
        elif sum(t.weight for t in self.teachers) <= 0:
            raise ValueError("teacher weights must not all be zero")
        return self

    @property
    def all_teachers(self) -> list[TeacherSpec]:
        return self.teachers or ([self.teacher] if self.teacher else [])


JOB_KINDS = ("distill", "edit", "inject")
