"""Tokens/s of the service's KD step against a plain hand-written PyTorch KD loop, side by side.

    .venv/bin/python -m bench.throughput                  # the figure in docs/BENCHMARKS.md
    .venv/bin/python -m bench.throughput --profile        # torch.profiler table of our steps

Side ``recipe``: :class:`ml.distillation.recipe.DistillRecipe`, built from a ``RecipeConfig``
and driven by ``train()`` exactly as ``workers/distill_run.py`` drives it (the worker's sinks
write to the database every ``METRICS_FLUSH_EVERY`` steps; here they collect into a list).

Side ``plain``: the loop anyone would write: teacher forward under ``no_grad``, student forward,
forward KL over the response tokens (``F.kl_div`` on float32 log-softmaxes), backward, AdamW.

Both sides load the same teacher and student directories and train on the same batches in the
same order (the recipe's epoch-0 permutation), so their per-step losses agree (checked: the run
stops if the first step's losses differ). Timing: a step lasts from one call of the recipe's
``should_stop`` to the next (the plain loop takes the same timestamps), the first ``warmup``
steps are dropped, tokens are every non-pad input token. Repeats alternate which side runs
first (AB, BA, ...) because the cores are shared; the median over repeats is reported with the
spread (min-max), and the ratio is recipe / plain.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.synthetic_models import SpeedModels, SpeedSetup, build_speed_models, encoded_batches
from ml.data.examples import IGNORE_INDEX
from ml.distillation.recipe import DistillRecipe, MetricPoint, RecipeConfig
from ml.loading import load_causal_lm

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def recipe_config(models: SpeedModels, args: argparse.Namespace) -> RecipeConfig:
    return RecipeConfig(
        teacher_path=models.teacher_dir,
        student_path=models.student_dir,
        student_init=None,
        train_records=models.train[: args.batch * args.steps],
        eval_records=[],
        loss="fkl",
        batch_size=args.batch,
        max_steps=args.steps,
        lr=1e-4,
        schedule="constant",
        max_grad_norm=None,  # the plain loop does not clip; the recipe still computes the norm
        max_length=args.seq,
        seed=0,
    )


def run_recipe(models: SpeedModels, args: argparse.Namespace) -> dict[str, Any]:
    stamps: list[float] = []
    points: list[MetricPoint] = []

    def should_stop() -> bool:
        stamps.append(time.perf_counter())
        return False

    recipe = DistillRecipe(
        recipe_config(models, args),
        metrics_sink=points.extend,
        event_sink=lambda level, message, data: None,
        should_stop=should_stop,
        on_checkpoint=lambda step, path: None,
    )
    recipe.setup()
    recipe.train()
    stamps.append(time.perf_counter())
    losses = [p.value for p in sorted(points, key=lambda p: p.step) if p.key == "train/loss"]
    recipe.cleanup()
    return _summary(stamps, [args.batch * args.seq] * args.steps, losses, args.warmup)


def recipe_batches(models: SpeedModels, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """The recipe's epoch-0 batches (its permutation of the training records), in order."""
    records = models.train[: args.batch * args.steps]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    return encoded_batches(models, [records[i] for i in order], args.batch, args.seq)


def run_plain(
    models: SpeedModels, batches: list[dict[str, torch.Tensor]], args: argparse.Namespace
) -> dict[str, Any]:
    torch.manual_seed(0)
    teacher = load_causal_lm(models.teacher_dir)
    teacher.requires_grad_(False)
    student = load_causal_lm(models.student_dir)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    stamps, losses, tokens = [], [], []
    for batch in batches:
        stamps.append(time.perf_counter())
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits[:, :-1]
        student_logits = student(**inputs).logits[:, :-1]
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        loss = F.kl_div(
            F.log_softmax(student_logits[mask].float(), dim=-1),
            F.log_softmax(teacher_logits[mask].float(), dim=-1),
            log_target=True,
            reduction="batchmean",  # the mean over response tokens of KL(teacher || student)
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens.append(int(batch["attention_mask"].sum()))
    stamps.append(time.perf_counter())
    return _summary(stamps, tokens, losses, args.warmup)


def _summary(
    stamps: list[float], tokens: list[int], losses: list[float], warmup: int
) -> dict[str, Any]:
    seconds = stamps[-1] - stamps[warmup]
    return {
        "tokens_per_s": sum(tokens[warmup:]) / seconds,
        "step_seconds": [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=False)],
        "losses": losses,
    }


def profile_recipe(models: SpeedModels, args: argparse.Namespace) -> None:
    """Print where a recipe step's CPU time goes (torch.profiler, steps after the warmup)."""
    from torch.profiler import ProfilerActivity, profile

    config = recipe_config(models, args)
    seen = {"n": 0}
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)

    def should_stop() -> bool:
        seen["n"] += 1
        if seen["n"] == args.warmup + 1:
            prof.__enter__()
        return False

    recipe = DistillRecipe(
        config,
        metrics_sink=lambda points: None,
        event_sink=lambda level, message, data: None,
        should_stop=should_stop,
        on_checkpoint=lambda step, path: None,
    )
    recipe.setup()
    recipe.train()
    prof.__exit__(None, None, None)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = SpeedSetup(
        vocab_size=args.vocab,
        hidden=args.hidden,
        teacher_layers=args.teacher_layers,
        student_layers=args.student_layers,
        max_length=args.seq,
        records=args.batch * args.steps,
    )
    models = build_speed_models(setup)
    if args.profile:
        profile_recipe(models, args)
        return
    batches = recipe_batches(models, args)
    sides: dict[str, Callable[[], dict[str, Any]]] = {
        "recipe": lambda: run_recipe(models, args),
        "plain": lambda: run_plain(models, batches, args),
    }
    runs: dict[str, list[dict[str, Any]]] = {"recipe": [], "plain": []}
    for repeat in range(args.repeats):
        order = ("recipe", "plain") if repeat % 2 == 0 else ("plain", "recipe")
        for side in order:
            runs[side].append(sides[side]())
            print(f"repeat {repeat} {side:>6}: {runs[side][-1]['tokens_per_s']:8.0f} tokens/s")
    first_recipe, first_plain = runs["recipe"][0]["losses"][0], runs["plain"][0]["losses"][0]
    if abs(first_recipe - first_plain) > 1e-4 * max(1.0, abs(first_plain)):
        raise SystemExit(f"first-step losses differ: recipe {first_recipe}, plain {first_plain}")
    report = _report(args, setup, runs)
    print(json.dumps(report["summary"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def _report(
    args: argparse.Namespace, setup: SpeedSetup, runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    rates = {side: [r["tokens_per_s"] for r in runs[side]] for side in runs}
    ratios = [a / b for a, b in zip(rates["recipe"], rates["plain"], strict=True)]
    summary: dict[str, Any] = {
        side: {
            "median_tokens_per_s": round(statistics.median(values), 1),
            "min": round(min(values), 1),
            "max": round(max(values), 1),
        }
        for side, values in rates.items()
    }
    summary["ratio_recipe_over_plain"] = {
        "of_medians": round(
            summary["recipe"]["median_tokens_per_s"] / summary["plain"]["median_tokens_per_s"], 3
        ),
        "per_repeat": [round(r, 3) for r in ratios],
    }
    summary["last_step_loss"] = {
        "recipe": runs["recipe"][0]["losses"][-1],
        "plain": runs["plain"][0]["losses"][-1],
    }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
        "settings": vars(args) | {"out": str(args.out)} | {"setup": setup.key()},
        "summary": summary,
        "runs": runs,
    }


if __name__ == "__main__":
    main()
