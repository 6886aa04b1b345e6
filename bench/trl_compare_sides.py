"""The sides of :mod:`bench.trl_compare`: our recipe, TRL GKDTrainer, TRL DistillationTrainer.

Each ``run_*`` loads the teacher and student from the same directories, trains ``args.steps``
steps on the same records in the same order, and returns the step timestamps (one per step start,
plus the end), the non-padding input tokens of each step, the per-step training losses as the
library reports them, the RSS after loading, the peak RSS so far, and the trained student.
TRL is imported only here and only inside the TRL runners (it lives in ``.venv-bench``).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.synthetic_models import SpeedModels
from ml.data.examples import IGNORE_INDEX


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------ our recipe
def run_ours(models: SpeedModels, args: argparse.Namespace, chunked: bool) -> dict[str, Any]:
    from ml.distillation.recipe import DistillRecipe, MetricPoint, RecipeConfig

    onpolicy = args.scenario == "onpolicy"
    config = RecipeConfig(
        teacher_path=models.teacher_dir,
        student_path=models.student_dir,
        student_init=None,
        train_records=models.train[: args.batch * args.steps],
        eval_records=[],
        loss="jsd",
        loss_params={"beta": args.beta},
        batch_size=args.batch,
        max_steps=args.steps,
        lr=args.lr,
        schedule="constant",
        max_grad_norm=1.0,
        max_length=args.seq,
        seed=0,
        data_mode="onpolicy" if onpolicy else "offline",
        lmbda=args.lmbda if onpolicy else 0.0,
        generation={"max_new_tokens": args.max_new_tokens},
        kd_chunk_tokens=args.chunk_tokens if chunked else 0,
    )
    stamps: list[float] = []
    points: list[MetricPoint] = []

    def should_stop() -> bool:
        stamps.append(time.perf_counter())
        return False

    recipe = DistillRecipe(
        config,
        metrics_sink=points.extend,
        event_sink=lambda level, message, data: None,
        should_stop=should_stop,
        on_checkpoint=lambda step, path: None,
    )
    recipe.setup()
    rss_loaded = _rss_mb()
    recipe.train()
    stamps.append(time.perf_counter())
    by_step = sorted(points, key=lambda p: p.step)
    tokens = [int(p.value) for p in by_step if p.key == "train/tokens"]
    losses = [p.value for p in by_step if p.key == "train/loss"]
    return {
        "stamps": stamps,
        "tokens": tokens,
        "losses": losses,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": _peak_rss_mb(),
        "student": recipe.student,
        "teacher": recipe.teacher,
    }


# ------------------------------------------------------------------------------- TRL
def _ordered_examples(models: SpeedModels, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The recipe's epoch-0 order of the training records, encoded as the recipe encodes them."""
    from ml.data.examples import encode_example
    from ml.loading import load_tokenizer

    records = models.train[: args.batch * args.steps]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    tokenizer = load_tokenizer(models.teacher_dir)
    return (
        [encode_example(tokenizer, *records[i], args.seq) for i in order],
        tokenizer,
        [records[i] for i in order],
    )


def _stamp_callback(stamps: list[float]) -> Any:
    from transformers import TrainerCallback

    class Stamps(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    return Stamps()


def _common_trl_args(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    return {
        "output_dir": out_dir,
        "per_device_train_batch_size": args.batch,
        "max_steps": args.steps,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": 0,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "beta": args.beta,
    }


def run_trl_gkd(models: SpeedModels, args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from ml.data.examples import collate
    from ml.loading import load_causal_lm

    examples, tokenizer, _ = _ordered_examples(models, args)
    pad_id = int(tokenizer.pad_token_id)
    tokens: list[int] = []

    def collator(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(
            [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows], pad_id
        )
        prompts = [
            r["input_ids"][: next(i for i, v in enumerate(r["labels"]) if v != IGNORE_INDEX)]
            for r in rows
        ]
        width = max(len(p) for p in prompts)  # generate wants left padding
        batch["prompts"] = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        batch["prompt_attention_mask"] = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        )
        return batch

    class Measured(GKDTrainer):  # type: ignore[misc]
        def compute_loss(self, model: Any, inputs: Any, *a: Any, **k: Any) -> Any:
            tokens.append(int(inputs["attention_mask"].sum()))  # after any on-policy generation
            return super().compute_loss(model, inputs, *a, **k)

    teacher = load_causal_lm(models.teacher_dir)
    student = load_causal_lm(models.student_dir)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out_dir:
        config = GKDConfig(
            **_common_trl_args(args, out_dir),
            lmbda=args.lmbda if args.scenario == "onpolicy" else 0.0,
            max_new_tokens=args.max_new_tokens,
            temperature=1.0,
            max_length=args.seq,
            train_sampling_strategy="sequential",
        )
        trainer = Measured(
            model=student,
            teacher_model=teacher,
            args=config,
            data_collator=collator,
            train_dataset=Dataset.from_list(examples),
            processing_class=tokenizer,
            callbacks=[_stamp_callback(stamps)],
        )
        rss_loaded = _rss_mb()
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "stamps": stamps,
        "tokens": tokens,
        "losses": losses,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": _peak_rss_mb(),
        "student": trainer.model,
        "teacher": teacher,
    }


def run_trl_distill(models: SpeedModels, args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from ml.loading import load_causal_lm

    examples, tokenizer, _ = _ordered_examples(models, args)
    # Prompt-only text data: the same [bos] + prompt tokens as the other sides, as text.
    prompts = []
    for e in examples:
        cut = next(i for i, v in enumerate(e["labels"]) if v != IGNORE_INDEX)
        prompts.append(tokenizer.decode(e["input_ids"][:cut], skip_special_tokens=False))
    tokens: list[int] = []

    class Measured(DistillationTrainer):  # type: ignore[misc]
        def compute_loss(self, model: Any, inputs: Any, *a: Any, **k: Any) -> Any:
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            tokens.append(int(mask.sum()))
            return super().compute_loss(model, inputs, *a, **k)

    teacher = load_causal_lm(models.teacher_dir)
    student = load_causal_lm(models.student_dir)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out_dir:
        config = DistillationConfig(
            **_common_trl_args(args, out_dir),
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            shuffle_dataset=False,
        )
        trainer = Measured(
            model=student,
            teacher_model=teacher,
            args=config,
            train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
            processing_class=tokenizer,
            callbacks=[_stamp_callback(stamps)],
        )
        rss_loaded = _rss_mb()
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "stamps": stamps,
        "tokens": tokens,
        "losses": losses,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": _peak_rss_mb(),
        "student": trainer.model,
        "teacher": teacher,
    }
