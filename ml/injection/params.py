"""The parameters of an injection job, checked with the field path of each mistake.

``method.params`` (all methods): ``steps``, ``lr``, ``batch_size``, ``seed``, ``warmup_steps``,
``max_grad_norm``. ``prompt_distillation`` adds ``loss`` (a KD method of
:data:`ml.distillation.losses.KD_METHODS`, default ``fkl``), ``temperature``, ``answers``
(``given``: the pairs' answers; ``sampled``: answers the teacher samples with the document in
context), ``samples_per_question``, ``sample_temperature`` and ``max_answer_tokens``.
``lora``: ``r``, ``alpha``, ``dropout``, ``target_modules``; absent means the default adapter on
every attention and MLP projection the model has (LoRA by default, as in the paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ml.distillation.lora import LoraSettings, linear_module_names
from ml.distillation.losses import KD_METHODS
from ml.injection.qa import InjectionInputError

METHODS = ("prompt_distillation", "sft_docs", "sft_qa")
ANSWER_SOURCES = ("given", "sampled")
#: Projections of LLaMA-style and GPT-2-style blocks; the default adapter takes those present.
DEFAULT_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
)


@dataclass(frozen=True)
class InjectionParams:
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    loss: str = "fkl"
    # Sampled answers (4 per question) and KD temperature 2, the paper's setting: ahead of
    # fine-tuning on the same Q&A pairs over 20 fresh seeds, where the pairs' own answers at
    # temperature 1 tied it (docs/BENCHMARKS.md "Knowledge injection").
    temperature: float = 2.0
    answers: str = "sampled"
    samples_per_question: int = 4
    sample_temperature: float = 1.0
    max_answer_tokens: int = 8


_COMMON = ("steps", "lr", "batch_size", "seed", "warmup_steps", "max_grad_norm")
_DISTILLATION = (
    "loss",
    "temperature",
    "answers",
    "samples_per_question",
    "sample_temperature",
    "max_answer_tokens",
)
_INTEGERS = {"steps": 1, "batch_size": 1, "seed": 0, "warmup_steps": 0}
_INTEGERS |= {"samples_per_question": 1, "max_answer_tokens": 1}
_POSITIVE = ("lr", "max_grad_norm", "temperature", "sample_temperature")


def _check_value(name: str, value: Any) -> Any:
    field = f"method.params.{name}"
    if name in _INTEGERS:
        if isinstance(value, bool) or not isinstance(value, int) or value < _INTEGERS[name]:
            raise InjectionInputError(field, f"must be an integer >= {_INTEGERS[name]}")
        return value
    if name in _POSITIVE:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(float(value)) or float(value) <= 0:
            raise InjectionInputError(field, "must be a finite number > 0")
        return float(value)
    if name == "loss" and value not in KD_METHODS:
        raise InjectionInputError(field, f"must be one of {', '.join(KD_METHODS)}")
    if name == "answers" and value not in ANSWER_SOURCES:
        raise InjectionInputError(field, f"must be one of {', '.join(ANSWER_SOURCES)}")
    return value


def resolve_params(method: str, params: Mapping[str, Any] | None) -> InjectionParams:
    """Defaults filled in; an unknown method or key, or a bad value, raises
    :class:`InjectionInputError` naming ``method.name`` or ``method.params.<key>``."""
    if method not in METHODS:
        raise InjectionInputError("method.name", f"must be one of {', '.join(METHODS)}")
    allowed = _COMMON + (_DISTILLATION if method == "prompt_distillation" else ())
    values: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if name not in allowed:
            raise InjectionInputError(
                f"method.params.{name}", f"unknown for {method}; allowed: {', '.join(allowed)}"
            )
        values[name] = _check_value(name, value)
    resolved = InjectionParams(**values)
    if resolved.warmup_steps >= resolved.steps:
        raise InjectionInputError("method.params.warmup_steps", "must be smaller than steps")
    return resolved


def resolve_lora(model: torch.nn.Module, lora: Mapping[str, Any] | None) -> LoraSettings:
    """The adapter settings; ``None`` gives r=16, alpha=32 on :data:`DEFAULT_LORA_TARGETS`
    present in ``model``. Errors name ``lora.<key>``."""
    available = linear_module_names(model)
    if lora is None:
        targets = tuple(t for t in DEFAULT_LORA_TARGETS if t in available)
        if not targets:
            raise InjectionInputError("lora", "the model has none of the default LoRA targets")
        return LoraSettings(r=16, alpha=32.0, target_modules=targets)
    known = ("r", "alpha", "dropout", "target_modules")
    for key in lora:
        if key not in known:
            raise InjectionInputError(f"lora.{key}", f"unknown; allowed: {', '.join(known)}")
    targets_value = lora.get("target_modules", [t for t in DEFAULT_LORA_TARGETS if t in available])
    if (
        not isinstance(targets_value, list | tuple)
        or not targets_value
        or not all(isinstance(t, str) for t in targets_value)
    ):
        raise InjectionInputError("lora.target_modules", "must be a non-empty list of names")
    missing = sorted(set(targets_value) - available)
    if missing:
        raise InjectionInputError(
            "lora.target_modules", f"{missing} are not linear modules of the model"
        )
    r, alpha, dropout = lora.get("r", 16), lora.get("alpha", 32.0), lora.get("dropout", 0.0)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InjectionInputError("lora.r", "must be an integer >= 1")
    for key, value in (("alpha", alpha), ("dropout", dropout)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InjectionInputError(f"lora.{key}", "must be a number")
    if not alpha > 0:
        raise InjectionInputError("lora.alpha", "must be > 0")
    if not 0 <= dropout < 1:
        raise InjectionInputError("lora.dropout", "must be in [0, 1)")
    return LoraSettings(
        r=r, alpha=float(alpha), dropout=float(dropout), target_modules=tuple(targets_value)
    )
