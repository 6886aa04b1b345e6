"""The specs of the two knowledge jobs (DESIGN.md "A job spec"): ``kind: edit`` changes single
facts in a model (ROME, MEMIT, FT, GRACE), ``kind: inject`` teaches it new documents (prompt
distillation, or the fine-tuning baselines). Parsed strictly, like the distill spec."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from api.jobs.spec import LoraSpec, Priority, ResourcesSpec
from api.jobs.spec_method import Strict
from ml.editing.apply import parse_hparams
from ml.editing.locate import EditingError
from ml.injection.params import resolve_params
from ml.injection.qa import InjectionInputError

EDIT_METHODS = ("ft", "rome", "memit", "grace")
EditMetric = Literal["reliability", "generalization", "locality", "portability"]
EDIT_METRICS: tuple[EditMetric, ...] = ("reliability", "generalization", "locality", "portability")
INJECT_METHODS = ("prompt_distillation", "sft_docs", "sft_qa")


class EditMethodSpec(Strict):
    name: Literal["ft", "rome", "memit", "grace"]
    params: dict[str, Any] = Field(
        default_factory=dict, description="the method's hyper-parameters (docs/SPEC.md)"
    )

    @model_validator(mode="after")
    def _known_params(self) -> EditMethodSpec:
        try:
            parse_hparams(self.name, self.params)  # the worker's own parser, so both agree
        except (EditingError, TypeError) as error:
            field = getattr(error, "field", "method.params")
            raise ValueError(f"{field}: {getattr(error, 'message', error)}") from error
        return self


class KeyStatsSpec(Strict):
    """The corpus ROME and MEMIT estimate the key covariance on (once per model, layer and
    corpus; stored and reused by later jobs)."""

    corpus: str = Field(min_length=1, description="dataset id of documents ({'text': ...})")
    max_texts: int = Field(default=2000, ge=1, le=1_000_000)


class CollapseSpec(Strict):
    """When sequential editing is judged to have broken the model: it stops, keeping the last
    state that passed."""

    min_locality: float = Field(default=0.5, ge=0, le=1)
    max_perplexity_ratio: float | None = Field(
        default=None, gt=1, description="held-out perplexity over the original model's"
    )


class SequentialSpec(Strict):
    eval_every: int = Field(default=10, ge=1, le=100_000)
    collapse: CollapseSpec = Field(default_factory=CollapseSpec)


class DiscoSpec(Strict):
    """Portability also decoded with DISCO (edited vs original model), beside plain greedy."""

    alpha: float = Field(default=1.0, ge=0, le=100)
    beta: float = Field(default=0.1, gt=0, le=1)


class OneProcessResourcesSpec(ResourcesSpec):
    """Edit and inject jobs run in one process: ``nproc`` 1 (so never ``gpu-multi``)."""

    @field_validator("nproc")
    @classmethod
    def _one_process(cls, value: int) -> int:
        if value != 1:
            raise ValueError("edit and inject jobs run in one process: nproc must be 1")
        return value


class EditSpec(Strict):
    kind: Literal["edit"]
    name: Annotated[str | None, Field(max_length=200)] = None
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    model: str = Field(min_length=1, description="registered model id or an allowed local path")
    requests: str = Field(min_length=1, description="dataset id of edit requests (JSONL)")
    method: EditMethodSpec
    mode: Literal["single", "batch", "sequential"] = "batch"
    evaluate: list[EditMetric] = Field(default_factory=lambda: list(EDIT_METRICS))
    stats: KeyStatsSpec | None = None
    heldout: str | None = Field(
        default=None, description="dataset id of documents: held-out perplexity before/after"
    )
    sequential: SequentialSpec = Field(default_factory=SequentialSpec)
    portability_disco: DiscoSpec | None = None
    seed: int = 0
    resources: OneProcessResourcesSpec = Field(default_factory=OneProcessResourcesSpec)
    priority: Priority = 5

    @model_validator(mode="after")
    def _stats_for_rank_updates(self) -> EditSpec:
        if self.method.name in ("rome", "memit") and self.stats is None:
            raise ValueError(
                f"{self.method.name} needs stats.corpus: a documents dataset to estimate the "
                "key covariance on"
            )
        if self.sequential.collapse.max_perplexity_ratio is not None and self.heldout is None:
            raise ValueError("sequential.collapse.max_perplexity_ratio needs a heldout dataset")
        return self


class InjectMethodSpec(Strict):
    name: Literal["prompt_distillation", "sft_docs", "sft_qa"] = "prompt_distillation"
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="steps, lr, batch_size, seed, warmup_steps, max_grad_norm; and for "
        "prompt_distillation loss, temperature, answers, samples_per_question, …",
    )

    @model_validator(mode="after")
    def _known_params(self) -> InjectMethodSpec:
        try:
            resolve_params(self.name, self.params)  # the worker's own check, so both agree
        except InjectionInputError as error:
            raise ValueError(f"{error.field}: {error.message}") from error
        return self


class InjectSpec(Strict):
    kind: Literal["inject"]
    name: Annotated[str | None, Field(max_length=200)] = None
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    model: str = Field(min_length=1, description="registered model id or an allowed local path")
    documents: str = Field(min_length=1, description="dataset id of documents ({'text': ...})")
    qa: str | None = Field(
        default=None,
        description="dataset id of question/answer pairs about the documents (prompt/response);"
        " generated from the documents when absent",
    )
    eval: str | None = Field(
        default=None, description="dataset id of held-out questions (prompt/response)"
    )
    method: InjectMethodSpec = Field(default_factory=InjectMethodSpec)
    lora: LoraSpec | None = Field(
        default=None, description="null: r=16, alpha=32 on the attention projections present"
    )
    resources: OneProcessResourcesSpec = Field(default_factory=OneProcessResourcesSpec)
    priority: Priority = 5
