"""The models and tokenizers of one distillation run, loaded and placed for training.

Split from :mod:`ml.distillation.recipe` (its ``setup()`` calls :func:`load_run_models` first):
which tokenizer reads the data, the frozen teacher, the student (a directory, a layer copy or a
config; with LoRA adapters when asked), float32 master weights on the device or sharded over
the ranks, and the checks that the losses can use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.distillation.chunked import check_logits_from_hidden
from ml.distillation.distributed import World
from ml.distillation.lora import LoraSettings, apply_lora
from ml.distillation.recipe_config import CROSS_VOCAB_LOSSES, RecipeConfig
from ml.distillation.sharding import shard_student
from ml.distillation.student_init import build_student
from ml.loading import load_causal_lm, load_tokenizer


@dataclass
class RunModels:
    """``tokenizer`` reads the training data and is saved with the student;
    ``teacher_tokenizer`` evaluates the teacher (the same object unless the student keeps its
    own tokenizer). ``teacher`` is None for plain fine-tuning without one."""

    tokenizer: PreTrainedTokenizerBase
    teacher_tokenizer: PreTrainedTokenizerBase
    teacher: PreTrainedModel | None
    student: PreTrainedModel


def load_run_models(
    cfg: RecipeConfig, device: torch.device, world: World, *, fsdp: bool
) -> RunModels:
    """Load the run's models; call after seeding (a student's random init depends on it).

    Raises ``ValueError`` when a same-vocabulary loss meets two vocabularies, or when the
    chunked KD path cannot compute logits from hidden states for either model.
    """
    # Tokenizer before models: a config-initialised student takes its vocabulary size.
    # A student model keeps its own tokenizer where no same-vocabulary KD ties it to the
    # teacher's (ce, cross-vocabulary losses); the teacher is then evaluated with its own.
    cross = cfg.loss in CROSS_VOCAB_LOSSES
    own = cfg.student_path is not None and (cross or cfg.loss == "ce")
    source = cfg.student_path if own or cfg.teacher_path is None else cfg.teacher_path
    tokenizer = load_tokenizer(source)  # type: ignore[arg-type]
    teacher_tokenizer = tokenizer
    if own and cfg.teacher_path is not None:
        teacher_tokenizer = load_tokenizer(cfg.teacher_path)
    teacher = None
    if cfg.teacher_path is not None:
        teacher = load_causal_lm(cfg.teacher_path, device=cfg.device)
        teacher.requires_grad_(False)
    student = build_student(
        student_path=cfg.student_path,
        student_init=cfg.student_init,
        teacher=teacher,
        tokenizer=tokenizer,
    )
    if cfg.lora is not None:  # adapters before .to(): peft creates them on the base's device
        lora = dict(cfg.lora)
        lora["target_modules"] = tuple(lora.get("target_modules") or LoraSettings().target_modules)
        student = apply_lora(student, LoraSettings(**lora))  # type: ignore[assignment]
    # float32 master weights everywhere; cuda computes under bf16 autocast instead.
    if fsdp:
        # Equal weights on every rank first; sharding then moves each shard to its device.
        student.to(dtype=torch.float32)  # type: ignore[call-arg]
        world.broadcast_parameters(student)
        shard_student(student)
    else:
        student.to(device=device, dtype=torch.float32)  # type: ignore[call-arg]
    student.train()
    if not own:
        _check_vocabularies(student, teacher)
    if cfg.kd_chunk_tokens and teacher is not None:
        check_logits_from_hidden(student, name="student")
        check_logits_from_hidden(teacher, name="teacher")
    return RunModels(tokenizer, teacher_tokenizer, teacher, student)


def _check_vocabularies(student: PreTrainedModel, teacher: PreTrainedModel | None) -> None:
    if teacher is None:
        return
    student_vocab = student.get_output_embeddings().weight.shape[0]
    teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"student vocabulary ({student_vocab}) differs from the teacher's "
            f"({teacher_vocab}); same-vocabulary KD needs them equal"
        )
