"""Build the student a recipe trains: an existing directory, a teacher layer copy, or a config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.loading import init_student_from_config, init_student_from_teacher, load_causal_lm


def parse_every_k(value: Any) -> int:
    """``2``, ``"2"`` or ``"every_2nd"`` -> 2 (the job spec spells it ``every_2nd``)."""
    if isinstance(value, bool):
        raise ValueError(f"from_teacher_layers must be an int >= 1, got {value!r}")
    if isinstance(value, int):
        k = value
    elif isinstance(value, str) and (
        match := re.fullmatch(r"(?:every_)?(\d+)(?:st|nd|rd|th)?", value)
    ):
        k = int(match.group(1))
    else:
        raise ValueError(f"from_teacher_layers must be an int or 'every_<k>th', got {value!r}")
    if k < 1:
        raise ValueError(f"from_teacher_layers must be >= 1, got {k}")
    return k


def build_student(
    *,
    student_path: Path | None,
    student_init: dict[str, Any] | None,
    teacher: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
) -> PreTrainedModel:
    """Return the untrained student. The caller seeds torch first (random inits).

    ``student_path`` wins; otherwise ``student_init`` is ``{"from_teacher_layers": k}`` (needs
    the teacher) or ``{"config": {...}, "model_type": "llama"}`` (vocabulary from the teacher's
    output layer when there is a teacher, else from the tokenizer).
    """
    if student_path is not None:
        return load_causal_lm(student_path)
    if not student_init:
        raise ValueError("student_path or student_init is required")
    if "from_teacher_layers" in student_init:
        if teacher is None:
            raise ValueError("student_init.from_teacher_layers needs a teacher")
        return init_student_from_teacher(
            teacher, parse_every_k(student_init["from_teacher_layers"])
        )
    if "config" in student_init:
        if teacher is not None:
            vocab_size = int(teacher.get_output_embeddings().weight.shape[0])
        else:
            vocab_size = len(tokenizer)
        special = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        return init_student_from_config(
            {**special, **dict(student_init["config"])},
            vocab_size=vocab_size,
            model_type=str(student_init.get("model_type", "llama")),
        )
    raise ValueError(
        f"student_init needs 'from_teacher_layers' or 'config', got keys {sorted(student_init)}"
    )
