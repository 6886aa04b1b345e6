"""Configuration and result types of :mod:`ml.distillation.recipe`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.distillation.losses import KD_METHODS, validate_loss_params
from ml.distillation.schedule import SCHEDULES

DATA_MODES = ("offline", "onpolicy", "opd", "skd")
# ml/crossvocab: the teacher's and the student's tokenizers differ.
CROSS_VOCAB_LOSSES = ("dskd", "uld", "mined")
# Sparse cached targets carry only part of the teacher's distribution: forward KL (with CE mixed
# in) is what they estimate; other divergences need the whole distribution.
CACHEABLE_LOSSES = ("fkl",)


def teacher_cache_fits(loss: str, data_mode: str, n_teachers: int, kd_chunk_tokens: int) -> bool:
    """Whether sparse cached targets can stand in for the teacher of such a run."""
    return (
        loss in CACHEABLE_LOSSES
        and data_mode == "offline"
        and n_teachers == 1
        and not kd_chunk_tokens
    )


@dataclass
class MetricPoint:
    key: str
    step: int
    value: float


@dataclass
class RecipeConfig:
    """Everything a distillation run needs; see the module docstring for the loss."""

    teacher_path: Path | None  # None allowed only for loss "ce"
    student_path: Path | None  # an existing HF dir to start from, or None -> student_init
    student_init: dict[str, Any] | None  # {"from_teacher_layers": k} or {"config": {...}}
    train_records: list[tuple[str, str]]  # (prompt text incl. template, response text)
    eval_records: list[tuple[str, str]]
    loss: str = "fkl"  # "ce" or one of KD_METHODS
    # The method's parameters (jsd: beta; skl/srkl: alpha; akl: mu; atkd: k, ratio, lam;
    # taid: t_start, t_end, alpha, beta of its schedule); checked by validate_loss_params.
    loss_params: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    alpha_ce: float = 0.0  # total = (1 - alpha_ce) * kd + alpha_ce * ce; "ce" -> total = ce
    epochs: int = 1
    max_steps: int | None = None  # when set, overrides epochs (data cycles as needed)
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant, after linear warmup
    max_grad_norm: float | None = 1.0
    max_length: int = 128
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps; 0 = never
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    eval_max_examples: int = 64
    max_new_tokens: int = 16
    device: str = "cpu"  # "cpu" or "cuda[:i]"; cuda trains under bf16 autocast
    checkpoint_dir: Path | None = None
    # > 0: KD from hidden states, this many response tokens at a time (ml/distillation/chunked);
    # 0: from full logits. Same losses either way; only peak memory differs. Ignored for "ce".
    kd_chunk_tokens: int = 0
    # Where batches come from (ml/distillation/data_modes.py): "offline" (the dataset),
    # "onpolicy" (a share ``lmbda`` of steps on student samples), "opd" (student samples scored
    # by the sampled-token reverse KL), "skd" (student proposals, teacher top-k corrections).
    # seqkd happens before the recipe: its records already hold the teacher's responses.
    data_mode: str = "offline"
    lmbda: float = 0.5
    skd_top_k: int = 25
    generation: dict[str, Any] = field(default_factory=dict)  # GenerationSettings fields
    # More same-vocabulary teachers besides ``teacher_path``: mixed by ``teacher_weights`` (one
    # weight per teacher, primary first) or, with ``train_routes`` (a teacher index per training
    # record), one teacher per example.
    extra_teacher_paths: list[Path] = field(default_factory=list)
    teacher_weights: list[float] | None = None
    train_routes: list[int] | None = None
    # A sparse teacher-logit cache built for exactly these training records: KD reads its
    # targets instead of running the teacher (ml/distillation/teacher_cache.py).
    teacher_cache_dir: Path | None = None
    teacher_cache_fingerprint: str | None = None
    teacher_cache_fields: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None  # LoraSettings fields; None = train every weight
    # A teacher behind an inference server instead of ``teacher_path`` (the spec's
    # ``teacher.remote``: url, protocol, top_k, model, api_key_env, timeout_s); the recipe gets
    # its score function from the caller (ml/distillation/remote_teacher.py).
    remote_teacher: dict[str, Any] | None = None
    # Shard the student's weights, gradients and optimizer state over the ranks (FSDP,
    # ml/distillation/sharding.py) instead of replicating them; only with several processes.
    fsdp: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.loss in CROSS_VOCAB_LOSSES:
            self._validate_cross_vocab()
        elif self.loss != "ce" and self.loss not in KD_METHODS:
            raise ValueError(
                f"loss must be 'ce' or one of {KD_METHODS + CROSS_VOCAB_LOSSES}, got {self.loss!r}"
            )
        else:
            validate_loss_params(self.loss, self.loss_params)
        if self.kd_chunk_tokens < 0:
            raise ValueError(f"kd_chunk_tokens must be >= 0, got {self.kd_chunk_tokens}")
        if self.loss != "ce" and self.teacher_path is None and self.remote_teacher is None:
            raise ValueError(f"loss {self.loss!r} needs a teacher_path or a remote_teacher")
        if self.student_path is None and not self.student_init:
            raise ValueError("give student_path or student_init")
        if self.teacher_path is None and self.student_path is None:
            raise ValueError("a tokenizer comes from teacher_path or student_path: give one")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.alpha_ce <= 1.0:
            raise ValueError(f"alpha_ce must be in [0, 1], got {self.alpha_ce}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 when set")
        if not self.train_records:
            raise ValueError("train_records is empty")
        if self.checkpoint_every and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir")
        if self.fsdp:
            self._validate_fsdp()
        self._validate_sources()

    def _validate_fsdp(self) -> None:
        # Each sharded forward is a collective, so every rank must run the same calls: student
        # generation (data modes other than offline) could stop at different lengths per rank,
        # and LoRA, chunked KD and cross-vocabulary projectors use the student's weights
        # outside its forward.
        if self.data_mode != "offline":
            raise ValueError(f"fsdp trains with data_mode 'offline', not {self.data_mode!r}")
        if self.lora is not None:
            raise ValueError("fsdp shards a fully trained student: not with lora")
        if self.kd_chunk_tokens:
            raise ValueError("fsdp computes KD from full logits: kd_chunk_tokens must be 0")
        if self.loss in CROSS_VOCAB_LOSSES:
            raise ValueError(f"fsdp works with same-vocabulary losses, not {self.loss!r}")
        if self.remote_teacher is not None:
            raise ValueError("fsdp needs a local teacher, not a remote one")

    def _validate_cross_vocab(self) -> None:
        if self.loss_params:
            raise ValueError(f"loss {self.loss!r} takes no parameters")
        if self.student_path is None:
            raise ValueError(f"loss {self.loss!r} needs a student_path: its own tokenizer")
        if self.data_mode != "offline" or self.extra_teacher_paths or self.teacher_cache_dir:
            raise ValueError(f"loss {self.loss!r} works offline with one teacher run live")
        if self.kd_chunk_tokens:
            raise ValueError(f"loss {self.loss!r} does not take kd_chunk_tokens")

    def _validate_sources(self) -> None:
        if self.data_mode not in DATA_MODES:
            raise ValueError(f"data_mode must be one of {DATA_MODES}, got {self.data_mode!r}")
        if self.data_mode != "offline" and self.loss == "ce":
            raise ValueError(f"data_mode {self.data_mode!r} needs a KD loss, not 'ce'")
        if self.data_mode == "opd" and self.loss != "rkl":
            raise ValueError("data_mode 'opd' estimates the reverse KL: set loss to 'rkl'")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")
        several = bool(self.extra_teacher_paths)
        n_teachers = 1 + len(self.extra_teacher_paths)
        if self.teacher_weights is not None and len(self.teacher_weights) != n_teachers:
            raise ValueError(f"teacher_weights needs {n_teachers} weights")
        if self.train_routes is not None:
            if len(self.train_routes) != len(self.train_records):
                raise ValueError("train_routes needs one teacher index per training record")
            if any(not 0 <= r < n_teachers for r in self.train_routes):
                raise ValueError("train_routes names a teacher that does not exist")
        cached = self.teacher_cache_dir is not None
        if cached and (self.teacher_cache_fingerprint is None or self.loss not in CACHEABLE_LOSSES):
            raise ValueError("a teacher cache needs its fingerprint and loss 'fkl'")
        if (several or cached) and self.data_mode != "offline":
            raise ValueError("several teachers or a teacher cache work with data_mode 'offline'")
        if several and cached:
            raise ValueError("a teacher cache holds one teacher's targets")
        if self.kd_chunk_tokens and (several or cached or self.data_mode == "opd"):
            raise ValueError("kd_chunk_tokens works with one teacher run live, not opd")
        if self.remote_teacher is not None:
            self._validate_remote(several)

    def _validate_remote(self, several: bool) -> None:
        # A remote teacher sends top-k log-probabilities (and each token's own): enough for the
        # sparse forward KL (as a top-k cache) and for opd's sampled-token reward, nothing else.
        if self.teacher_path is not None or several:
            raise ValueError("a remote teacher is the only teacher: no teacher_path besides it")
        if self.student_path is None:
            raise ValueError("a remote teacher needs a student_path: the student's tokenizer")
        fits = (self.loss == "fkl" and self.data_mode in ("offline", "onpolicy")) or (
            self.loss == "rkl" and self.data_mode == "opd"
        )
        if not fits or self.kd_chunk_tokens:
            raise ValueError(
                "a remote teacher works with loss 'fkl' (offline or onpolicy, top-k targets) or "
                "'rkl' with data_mode 'opd', without kd_chunk_tokens"
            )

    def to_json(self) -> str:
        """The whole config as JSON: how a launcher hands it to training processes."""
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> RecipeConfig:
        """The config that :meth:`to_json` wrote (paths and record pairs restored)."""
        values = json.loads(text)
        for name in ("teacher_path", "student_path", "checkpoint_dir", "teacher_cache_dir"):
            if values[name] is not None:
                values[name] = Path(values[name])
        values["extra_teacher_paths"] = [Path(p) for p in values["extra_teacher_paths"]]
        for name in ("train_records", "eval_records"):
            values[name] = [(prompt, response) for prompt, response in values[name]]
        return cls(**values)

    def fingerprint(self) -> str:
        """sha256 of the fields that decide the training trajectory (not device or logging)."""
        values = asdict(self)
        for name in (
            "device",
            "checkpoint_dir",
            "checkpoint_every",
            "eval_every",
            "kd_chunk_tokens",
            "teacher_cache_dir",
        ):
            values.pop(name)
        for name in ("train_records", "eval_records"):
            values[name] = hashlib.sha256(json.dumps(values[name]).encode()).hexdigest()
        payload = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class TrainOutcome:
    stopped: bool
    step: int
    eval: dict[str, float] = field(default_factory=dict)
