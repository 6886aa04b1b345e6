"""LoRA students through ``peft`` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"): the student's chosen linear layers get a trainable low-rank update ``B·A`` scaled by
``alpha / r``; everything else is frozen. The adapter is saved on its own, and the produced model
directory holds either the merged weights or the untouched base weights beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ml.loading import save_model

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    merge: bool = True

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")


def linear_module_names(model: torch.nn.Module) -> set[str]:
    """The last name component of every ``nn.Linear`` (``q_proj``, ``down_proj``, ``lm_head``)."""
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def linear_module_names_for_config(config: PretrainedConfig) -> set[str]:
    """As :func:`linear_module_names`, for a model built on the meta device: no weights, no
    memory, no code from the model directory (``trust_remote_code`` stays off)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return linear_module_names(model)


def linear_module_names_for_dir(path: Path) -> set[str]:
    return linear_module_names_for_config(AutoConfig.from_pretrained(path, trust_remote_code=False))


def apply_lora(student: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    available = linear_module_names(student)
    missing = sorted(set(settings.target_modules) - available)
    if missing:
        raise ValueError(
            f"lora.target_modules {missing} are not linear modules of the student; "
            f"available: {', '.join(sorted(available))}"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(student, config)  # type: ignore[return-value]


def save_lora_student(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, *, merge: bool
) -> None:
    """``out_dir/adapter`` gets the adapter; ``out_dir`` a full model: merged weights when
    ``merge``, else the frozen base weights (apply the adapter with peft to use it). The
    model is modified in place: call this last."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir / ADAPTER_DIR), safe_serialization=True)
    base = model.merge_and_unload() if merge else model.unload()
    save_model(base, tokenizer, out_dir)  # type: ignore[arg-type]
