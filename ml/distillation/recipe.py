"""Single-device distillation recipe: config -> setup() -> train() -> save_student() -> cleanup().

Shaped after torchtune's ``knowledge_distillation_single_device`` recipe: one class built by
composition (loaders, losses, scheduler, checkpointing are plain functions from sibling
modules), no inheritance. The worker only sees callables for metrics, events, stop requests and
checkpoints, so nothing here knows about databases or queues.

Loss per optimizer step (``S`` = the step's micro-batches, ``N`` = their response tokens)::

    loss = sum_{mb in S} [(1 - alpha_ce) * KD_sum(mb) + alpha_ce * CE_sum(mb)] / N

so gradient accumulation gives the same update as one batch holding all the micro-batches.
``KD_sum`` comes from full logits, or, with ``kd_chunk_tokens > 0``, from final hidden states a
chunk of tokens at a time (``ml/distillation/chunked.py``; same value, less memory). For
``taid`` the recipe owns a :class:`TaidSchedule`: each step's loss uses its current ``t``, the
step's mean KD loss then updates it, and its state travels in the checkpoints.
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.crossvocab.step import CrossVocabStep, build_cross_step
from ml.data.examples import IGNORE_INDEX, collate, encode_example
from ml.distillation.batch_order import BatchOrder
from ml.distillation.checkpointing import (
    checkpoint_name,
    read_checkpoint,
    read_checkpoint_tensors,
    write_checkpoint,
)
from ml.distillation.distributed import World
from ml.distillation.lora import save_lora_student
from ml.distillation.recipe_config import (
    CROSS_VOCAB_LOSSES,
    MetricPoint,
    RecipeConfig,
    TrainOutcome,
)
from ml.distillation.recipe_models import load_run_models
from ml.distillation.remote_teacher import ScoreFn
from ml.distillation.schedule import build_scheduler
from ml.distillation.sharding import (
    FullState,
    checkpoint_sources,
    gather_full_state,
    load_full_state,
    unsharded_copy,
)
from ml.distillation.step_losses import MicroBatch, StepLosses
from ml.distillation.taid import TaidSchedule
from ml.distillation.teacher_signal import TeacherSignal, build_teacher_signal
from ml.evaluation.generation import evaluate_model
from ml.loading import load_causal_lm, save_model

METRICS_FLUSH_EVERY = 10

__all__ = ["DistillRecipe", "MetricPoint", "RecipeConfig", "TrainOutcome"]


class DistillRecipe:
    """Distil a teacher into a student (or fine-tune with ``loss="ce"``) on one device."""

    def __init__(
        self,
        config: RecipeConfig,
        *,
        metrics_sink: Callable[[list[MetricPoint]], None],
        event_sink: Callable[[str, str, dict[str, Any]], None],
        should_stop: Callable[[], bool],
        on_checkpoint: Callable[[int, Path], None],
        remote_score: ScoreFn | None = None,  # the remote teacher's, when config names one
        world: World | None = None,
    ) -> None:
        config.validate()
        self._remote_score = remote_score
        self.config = config
        # Data parallel over ``world`` (ml/distillation/distributed.py); ranks > 0 write nothing.
        self._world = world or World()
        writes = self._world.writes
        self._metrics_sink = metrics_sink if writes else lambda points: None
        self._event_sink = event_sink if writes else lambda level, message, data: None
        self._should_stop = should_stop
        self._on_checkpoint = on_checkpoint if writes else lambda step, path: None
        self.device = torch.device(config.device)
        self.total_steps = 0
        self.step = 0
        self._pending: list[MetricPoint] = []
        self.teacher: PreTrainedModel | None = None
        self.student: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._taid: TaidSchedule | None = None
        self._signal = TeacherSignal([])
        self._cross: CrossVocabStep | None = None  # set in setup() for dskd / uld / mined
        self._examples: list[Any] = []
        # FSDP (ml/distillation/sharding.py): the student is sharded over the ranks; rank 0
        # keeps the last gathered full state so it can save alone after the ranks part.
        self._fsdp = config.fsdp and self._world.distributed
        self._gathered: tuple[int, FullState] | None = None
        self._param_names: list[str] = []

    # ----------------------------------------------------------------------------- setup
    def setup(self, resume_from: Path | None = None) -> None:
        """Build everything, in dependency order, then restore ``resume_from`` if given."""
        cfg = self.config
        # Seeds first: the student's random init (or layer copy) must not depend on call order.
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        models = load_run_models(cfg, self.device, self._world, fsdp=self._fsdp)
        self.tokenizer, self._teacher_tokenizer = models.tokenizer, models.teacher_tokenizer
        self.teacher, self.student = models.teacher, models.student
        student = models.student
        self._trainable: torch.nn.Module = student
        # Data before the optimizer: the schedule needs the number of steps.
        if cfg.loss in CROSS_VOCAB_LOSSES:
            assert self.teacher is not None and cfg.teacher_path is not None
            self._cross, self._trainable = build_cross_step(
                cfg, student, self.teacher, self.tokenizer, self._teacher_tokenizer, self.device
            )
            self._examples = self._cross.encode(cfg.train_records, cfg.max_length)
        else:
            self._examples = [
                encode_example(self.tokenizer, p, r, cfg.max_length) for p, r in cfg.train_records
            ]
        # Teachers after the data: a cache is checked against exactly these examples.
        self._signal = build_teacher_signal(
            cfg, self.teacher, len(self._examples), self._event, self._remote_score
        )
        if self._signal.cache is not None:
            self.teacher = None  # the cache replaces its forward pass; evaluation reloads it
        self._losses = StepLosses(cfg, self._signal, self.tokenizer, self._autocast, self._cross)
        self._order = BatchOrder(
            len(self._examples),
            cfg.batch_size,
            cfg.grad_accum,
            cfg.seed,
            self._world,
            keep_empty=self._fsdp,
        )
        self.total_steps = cfg.max_steps or self._order.steps_per_epoch * cfg.epochs
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            warmup_steps=cfg.warmup_steps,
            total_steps=self.total_steps,
            schedule=cfg.schedule,
        )
        # TAID's t schedule spans the run, so it needs total_steps; resume restores its state.
        if cfg.loss == "taid":
            self._taid = TaidSchedule(total_steps=self.total_steps, **cfg.loss_params)
        # Resume last: it overwrites weights, optimizer, scheduler, RNG and data position.
        if resume_from is not None:
            self._resume(Path(resume_from))
        if not self._fsdp:  # (a sharded student was made equal before sharding)
            self._world.broadcast_parameters(self._trainable)  # every rank starts from rank 0's
        self._event(
            "info",
            "setup done",
            {
                "total_steps": self.total_steps,
                "steps_per_epoch": self._order.steps_per_epoch,
                "student_parameters": student.num_parameters(),
                "teacher_parameters": self.teacher.num_parameters() if self.teacher else None,
                "device": str(self.device),
                "start_step": self.step,
                "world_size": self._world.world_size,
            },
        )

    def _param_groups(self) -> list[dict[str, Any]]:
        # No weight decay on norms and biases (1-d tensors), as in most LM recipes.
        named = [(n, p) for n, p in self._trainable.named_parameters() if p.requires_grad]
        decay = [p for _, p in named if p.ndim >= 2]
        no_decay = [p for _, p in named if p.ndim < 2]
        # Optimizer order, by name: a sharded student's optimizer state is saved in it.
        self._param_names = [n for n, p in named if p.ndim >= 2] + [
            n for n, p in named if p.ndim < 2
        ]
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def _resume(self, path: Path) -> None:
        assert self.student is not None
        if self._fsdp:  # every rank reads the one-process checkpoint and keeps its shard
            weights, optimizer_state, state = read_checkpoint_tensors(path)
            full = FullState(model=weights, optimizer=optimizer_state)
            load_full_state(self._trainable, self.optimizer, full, self._param_names)
        else:
            state = read_checkpoint(path, model=self._trainable, optimizer=self.optimizer)
        scheduler_state = dict(state["scheduler"])
        scheduler_state["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
        self.scheduler.load_state_dict(scheduler_state)
        self.step = state["step"]
        self._order.epoch, self._order.position = state["epoch"], state["position"]
        if self._taid is not None and "taid" in state:
            self._taid.load_state_dict(state["taid"])
        if state.get("config_fingerprint") != self.config.fingerprint():
            self._event("warn", "resuming with a changed training config", {"path": str(path)})
        self._event("info", f"resumed from step {self.step}", {"step": self.step})

    # ----------------------------------------------------------------------------- train
    def train(self) -> TrainOutcome:
        """Run optimizer steps ``step + 1 .. total_steps``; evaluate at the end."""
        cfg = self.config
        while self.step < self.total_steps:
            if self._world.any(self._should_stop()):  # all ranks stop at the same step
                self._gather_for_rank_zero(with_optimizer=True)  # a pause checkpoints after
                self._flush_metrics()
                self._event("info", "stop requested", {"step": self.step})
                return TrainOutcome(stopped=True, step=self.step)
            self._train_step(list(self._next_micro_batches()))
            # Weights are equal on every rank after a step: rank 0 alone saves them (a sharded
            # student is gathered by all ranks first, inside save_checkpoint).
            if (
                cfg.checkpoint_every
                and self.step % cfg.checkpoint_every == 0
                and (self._world.writes or self._fsdp)
            ):
                self.save_checkpoint()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                self._evaluate_and_record()
            if self.step % METRICS_FLUSH_EVERY == 0:
                self._flush_metrics()
        results = self._evaluate_and_record()
        self._gather_for_rank_zero(with_optimizer=False)  # save_student runs on rank 0 alone
        self._flush_metrics()
        return TrainOutcome(stopped=False, step=self.step, eval=results)

    def _gather_for_rank_zero(self, *, with_optimizer: bool) -> None:
        """FSDP only: all ranks gather the full state into rank 0's memory (collective)."""
        if self._fsdp:
            optimizer = self.optimizer if with_optimizer else None
            self._gathered = (self.step, gather_full_state(self._trainable, optimizer))

    def _next_micro_batches(self) -> Iterator[MicroBatch]:
        """The next optimizer step's micro-batches: this rank's share (batch_order.py)."""
        pad_id = int(self.tokenizer.pad_token_id)  # type: ignore[union-attr]
        for indices in self._order.next_step():
            # A sharded student's rank with an empty share still runs the micro-batch (every
            # forward is a collective): on a stand-in example whose loss weighs nothing.
            examples = [self._examples[i] for i in indices or [0]]
            if self._cross is not None:
                yield self._cross.collate(examples, indices), indices
            else:
                yield collate(examples, pad_id), indices

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self, micro_batches: list[MicroBatch]) -> None:
        cfg = self.config
        assert self.student is not None
        started = time.perf_counter()
        micro_batches, generated, values = self._losses.batches(
            self.student, micro_batches, self.step + 1
        )
        n_tokens = sum(
            int((mb["labels"][:, 1:] != IGNORE_INDEX).sum()) for mb, ix in micro_batches if ix
        )
        # The global batch's token count: ranks' gradients then sum to the one-process gradient.
        denominator = max(int(self._world.sum([float(n_tokens)])[0]), 1)
        use_kd = cfg.loss != "ce"
        kd_params = self._kd_params()
        kd_total = ce_total = opd_kl_total = 0.0
        input_tokens = 0
        for batch, indices in micro_batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            input_tokens += int(batch["attention_mask"].sum())
            with self._autocast():
                ce_sum, kd_sum, opd_kl = self._losses.sums(
                    self.student, batch, indices or [0], kd_params
                )
                if not indices:  # an FSDP stand-in: same collectives, no contribution
                    ce_sum, opd_kl = ce_sum * 0.0, 0.0
                    kd_sum = kd_sum * 0.0 if kd_sum is not None else None
                total = ce_sum
                if kd_sum is not None:
                    kd_total += float(kd_sum.detach())
                    # CE on the student's own samples would only reinforce them: KD alone there.
                    mix = 0.0 if generated else cfg.alpha_ce
                    total = (1.0 - mix) * kd_sum + mix * ce_sum
            ce_total += float(ce_sum.detach())
            opd_kl_total += opd_kl
            (total / denominator).backward()
        if not self._fsdp:  # FSDP reduce-scatters (sums) the gradients in backward itself
            self._world.sum_gradients(self._trainable.parameters())
        kd_total, ce_total, opd_kl_total, summed_tokens = self._world.sum(
            [kd_total, ce_total, opd_kl_total, float(input_tokens)]
        )  # logged values are the global batch's, so curves compare across process counts
        input_tokens = int(summed_tokens)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self._trainable.parameters(), max_norm)
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        kd_mean, ce_mean = kd_total / denominator, ce_total / denominator
        loss = (1.0 - cfg.alpha_ce) * kd_mean + cfg.alpha_ce * ce_mean if use_kd else ce_mean
        elapsed = max(time.perf_counter() - started, 1e-9)
        if cfg.data_mode == "opd":
            values["train/opd_reverse_kl"] = opd_kl_total / denominator
        values |= {
            "train/loss": loss,
            "train/loss_ce": ce_mean,
            "train/lr": lr,
            "train/grad_norm": grad_norm,
            "train/tokens_per_s": input_tokens / elapsed,
            "train/tokens": float(input_tokens),  # summed into trained_tokens by the API
        }
        if use_kd:
            values["train/loss_kd"] = kd_mean
        if self._taid is not None:
            values["train/taid_t"] = kd_params["t"]  # the t this step's loss used
            self._taid.update(self.step, kd_mean)
        self._pending.extend(MetricPoint(k, self.step, v) for k, v in values.items())

    def _kd_params(self) -> dict[str, float]:
        """``kd_loss``'s method parameters for this step: TAID's current t, or the config's."""
        if self._taid is not None:
            return {"t": self._taid.t}
        return dict(self.config.loss_params)

    # ------------------------------------------------------------------ eval, checkpoints
    def evaluate(self, which: str = "student") -> dict[str, float]:
        """Held-out loss / exact match / ROUGE-L of the ``"student"`` or the ``"teacher"``."""
        if which not in ("student", "teacher"):
            raise ValueError(f"which must be 'student' or 'teacher', got {which!r}")
        if which == "teacher" and self.teacher is None and self.config.teacher_path is not None:
            self.teacher = load_causal_lm(self.config.teacher_path, device=self.config.device)
        model = self.student if which == "student" else self.teacher
        tokenizer = self.tokenizer if which == "student" else self._teacher_tokenizer
        if model is None or tokenizer is None:
            raise ValueError(f"no {which} model is loaded (call setup() first)")
        cfg = self.config
        with self._autocast():
            return evaluate_model(
                model,
                tokenizer,
                cfg.eval_records[: cfg.eval_max_examples],
                max_length=cfg.max_length,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=max(cfg.batch_size, 16),
            )

    def _evaluate_and_record(self) -> dict[str, float]:
        # A sharded student evaluates on every rank in step (identical inputs, so identical
        # generations); only rank 0 records.
        if not self.config.eval_records or not (self._world.writes or self._fsdp):
            return {}
        results = self.evaluate("student")
        for key in ("loss", "exact_match", "rouge_l"):
            self._pending.append(MetricPoint(f"eval/{key}", self.step, results[key]))
        self._event("info", f"eval at step {self.step}", dict(results, step=self.step))
        return results

    def save_checkpoint(self) -> Path:
        """Write the full training state for the current step and report it."""
        cfg = self.config
        if cfg.checkpoint_dir is None or self.student is None:
            raise ValueError("save_checkpoint needs setup() and a checkpoint_dir")
        self._flush_metrics()  # metrics up to this step are recorded before the checkpoint is
        state: FullState | None = None
        if self._fsdp:
            if self._gathered is None or self._gathered[0] != self.step:
                self._gather_for_rank_zero(with_optimizer=True)
            assert self._gathered is not None
            state = self._gathered[1]
            if state.model is None:  # ranks > 0: their part was the gather
                return cfg.checkpoint_dir / checkpoint_name(self.step)
        scheduler_state = {
            k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"
        }
        path = write_checkpoint(
            cfg.checkpoint_dir,
            self.step,
            **checkpoint_sources(self._trainable, self.optimizer, state),
            trainer_state={
                "step": self.step,
                "epoch": self._order.epoch,
                "position": self._order.position,
                "total_steps": self.total_steps,
                "scheduler": scheduler_state,
                "config_fingerprint": cfg.fingerprint(),
                "taid": self._taid.state_dict() if self._taid is not None else None,
            },
        )
        self._event(
            "info", f"checkpoint at step {self.step}", {"step": self.step, "path": str(path)}
        )
        self._on_checkpoint(self.step, path)
        return path

    def save_student(self, out_dir: Path) -> None:
        """``save_pretrained`` the student (safetensors) with the teacher's tokenizer."""
        if self.student is None or self.tokenizer is None:
            raise ValueError("call setup() before save_student()")
        if self.config.lora is not None:  # adapter + merged (or base) weights; call it last
            merge = bool(self.config.lora.get("merge", True))
            save_lora_student(self.student, self.tokenizer, Path(out_dir), merge=merge)  # type: ignore[arg-type]
            return
        if self._fsdp:  # rank 0, from the state gathered when training ended
            if self._gathered is None or self._gathered[1].model is None:
                raise ValueError("a sharded student is saved by rank 0 after train()")
            save_model(unsharded_copy(self.student, self._gathered[1].model), self.tokenizer,
                       Path(out_dir))  # fmt: skip
            return
        save_model(self.student, self.tokenizer, Path(out_dir))

    def cleanup(self) -> None:
        """Drop models and optimizer state and release cached accelerator memory."""
        self._flush_metrics()
        self._signal.close()
        self.teacher = self.student = None
        for name in ("optimizer", "scheduler", "_examples"):
            self.__dict__.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _flush_metrics(self) -> None:
        if self._pending:
            points, self._pending = self._pending, []
            self._metrics_sink(points)

    def _event(self, level: str, message: str, data: dict[str, Any]) -> None:
        self._event_sink(level, message, data)
