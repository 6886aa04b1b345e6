"""The ``method`` part of a distill spec: loss and its parameters, data mode, generation
settings and the teacher cache. Loss parameters are checked by the same function the recipe
uses (``ml.distillation.losses.validate_loss_params``), so the API and the worker agree."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ml.distillation.losses import KD_METHODS, validate_loss_params
from ml.distillation.recipe_config import CACHEABLE_LOSSES, CROSS_VOCAB_LOSSES

DATA_MODES = ("offline", "seqkd", "onpolicy", "opd", "skd")
COMMON_PARAMS = ("temperature", "alpha_ce")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationSpec(Strict):
    """Sampling for seqkd, onpolicy, opd and skd."""

    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=1.0, ge=0, le=10, description="0 = greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0 = no top-k cut")


class TeacherCacheSpec(Strict):
    """Capture settings of a sparse teacher-logit cache (part of its fingerprint)."""

    mode: Literal["topk", "sampled"] = "topk"
    k: int = Field(default=64, ge=1, le=65536, description="topk: ids kept per position")
    samples: int = Field(default=64, ge=1, le=65536, description="sampled: draws per position")
    proposal_temperature: float = Field(default=1.0, gt=0, le=10)
    seed: int = 0


class MethodSpec(Strict):
    loss: str = "fkl"
    params: dict[str, float] = Field(default_factory=dict)
    data_mode: str = "offline"
    lmbda: float = Field(
        default=0.5, ge=0, le=1, description="onpolicy: share of steps on student samples"
    )
    skd_top_k: int = Field(
        default=25, ge=1, description="skd: teacher top-k that accepts a proposal"
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    teacher_cache: Literal["auto", "off"] | TeacherCacheSpec = "auto"

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value == "ce" or value in KD_METHODS or value in CROSS_VOCAB_LOSSES:
            return value
        available = ", ".join(("ce", *KD_METHODS, *CROSS_VOCAB_LOSSES))
        raise ValueError(f"unknown loss '{value}'; available: {available}")

    @field_validator("data_mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in DATA_MODES:
            raise ValueError(f"unknown data mode '{value}'; available: {', '.join(DATA_MODES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MethodSpec:
        common = {k: v for k, v in self.params.items() if k in COMMON_PARAMS}
        if "temperature" in common and not 0 < common["temperature"] <= 100:
            raise ValueError("params.temperature must be in (0, 100]")
        if "alpha_ce" in common and not 0 <= common["alpha_ce"] <= 1:
            raise ValueError("params.alpha_ce must be in [0, 1]")
        specific = {k: v for k, v in self.params.items() if k not in COMMON_PARAMS}
        if self.loss in ("ce", *CROSS_VOCAB_LOSSES) and specific:
            raise ValueError(f"params: '{self.loss}' takes no {', '.join(sorted(specific))}")
        if self.loss in CROSS_VOCAB_LOSSES and self.data_mode != "offline":
            raise ValueError(f"'{self.loss}' distils offline: set data_mode to 'offline'")
        if self.loss not in ("ce", *CROSS_VOCAB_LOSSES):
            try:
                validate_loss_params(self.loss, specific)
            except ValueError as exc:
                raise ValueError(f"params: {exc}") from exc
        if self.loss == "ce" and self.data_mode not in ("offline", "seqkd"):
            raise ValueError(
                f"data_mode '{self.data_mode}' needs a KD loss: 'ce' only fine-tunes on the "
                "dataset (offline) or on teacher generations (seqkd)"
            )
        if self.data_mode == "opd" and self.loss != "rkl":
            raise ValueError(
                "data_mode 'opd' estimates the reverse KL on sampled tokens: set loss to 'rkl'"
            )
        if isinstance(self.teacher_cache, TeacherCacheSpec) and (
            self.data_mode != "offline" or self.loss not in CACHEABLE_LOSSES
        ):
            raise ValueError(
                "teacher_cache settings need data_mode 'offline' and loss "
                f"{' or '.join(CACHEABLE_LOSSES)}: sparse cached targets only estimate that"
            )
        if (
            isinstance(self.teacher_cache, TeacherCacheSpec)
            and self.teacher_cache.mode == "sampled"
        ):
            if self.params.get("temperature", 1.0) != 1.0:
                raise ValueError(
                    "a sampled teacher cache holds targets at temperature 1: drop "
                    "params.temperature or use teacher_cache mode 'topk'"
                )
        return self

    @property
    def loss_params(self) -> dict[str, float]:
        return {k: v for k, v in self.params.items() if k not in COMMON_PARAMS}
