"""The teacher-logit cache: a second KD job on the same teacher and data against the first.

    .venv/bin/python -m bench.teacher_cache_speed

Three jobs, each ``DistillRecipe.setup()`` + ``train()`` on the same teacher, student and
records (``bench/synthetic_models.py``; fkl, offline, one teacher: the runs the cache serves):

- ``live``: no cache; the teacher runs forward at every step.
- ``first``: what the worker does on a miss (``workers/teacher_work.py`` ``_build``): load the
  teacher, run :func:`ml.distillation.teacher_cache.capture_teacher_targets` over the training
  examples (top-k targets, the service's default settings), then train from the cache.
- ``second``: a later job on the same teacher and data: the cache is found, training reads it
  and the teacher never runs.

The cache replaces the teacher's forward pass with a read of sparse targets, so the second
job saves the teacher's share of each step; the first pays one teacher pass over the data
(less than the live run's when the run has more than one epoch). Repeats interleave the three
(order rotated each repeat); medians and spreads are reported. This goes through the ml path
the worker calls, not through the database lookups (``find_ready``/``claim_build``), which take
milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.synthetic_models import SpeedModels, SpeedSetup, build_speed_models
from ml.data.examples import encode_example
from ml.data.tokenizer import tokenizer_sha256
from ml.distillation.recipe import DistillRecipe, RecipeConfig
from ml.distillation.teacher_cache import capture_teacher_targets
from ml.distillation.teacher_cache_reader import (
    CaptureSettings,
    fingerprint_fields,
    fingerprint_of,
)
from ml.loading import load_causal_lm, load_tokenizer, weights_sha256

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _config(models: SpeedModels, args: argparse.Namespace, cache: dict[str, Any] | None):
    return RecipeConfig(
        teacher_path=models.teacher_dir,
        student_path=models.student_dir,
        student_init=None,
        train_records=models.train,
        eval_records=[],
        loss="fkl",
        batch_size=args.batch,
        epochs=args.epochs,
        lr=1e-4,
        max_length=args.seq,
        teacher_cache_dir=cache["dir"] if cache else None,
        teacher_cache_fingerprint=cache["fingerprint"] if cache else None,
        teacher_cache_fields=cache["fields"] if cache else None,
    )


def _train(config: RecipeConfig) -> list[float]:
    losses: list[float] = []

    def sink(points: list[Any]) -> None:
        losses.extend(p.value for p in points if p.key == "train/loss")

    recipe = DistillRecipe(
        config,
        metrics_sink=sink,
        event_sink=lambda level, message, data: None,
        should_stop=lambda: False,
        on_checkpoint=lambda step, path: None,
    )
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return losses


def _capture(models: SpeedModels, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    tokenizer = load_tokenizer(models.teacher_dir)
    settings = CaptureSettings()  # top-k 64, as a job's teacher_cache: {} asks
    fields = fingerprint_fields(
        teacher_sha256=weights_sha256(models.teacher_dir),
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        dataset_sha256="bench",
        max_length=args.seq,
        settings=settings,
    )
    fingerprint = fingerprint_of(fields)
    teacher = load_causal_lm(models.teacher_dir)
    examples = [encode_example(tokenizer, p, r, args.seq) for p, r in models.train]
    capture_teacher_targets(
        teacher, examples, out, settings=settings, fingerprint=fingerprint,
        fingerprint_fields=fields,
    )  # fmt: skip
    return {"dir": out, "fingerprint": fingerprint, "fields": fields}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "teacher_cache_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    setup = SpeedSetup(
        vocab_size=args.vocab, hidden=args.hidden, teacher_layers=args.teacher_layers,
        student_layers=args.student_layers, max_length=args.seq, records=args.records,
    )  # fmt: skip
    models = build_speed_models(setup)
    times: dict[str, list[float]] = {"live": [], "first": [], "second": []}
    losses: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="teacher-cache-") as tmp:
        for repeat in range(args.repeats):
            cache_dir = Path(tmp) / f"cache-{repeat}"
            sides = ["live", "first", "second"]
            sides = sides[repeat % 3 :] + sides[: repeat % 3]
            if sides.index("second") < sides.index("first"):  # a second job needs the first
                sides.remove("second")
                sides.append("second")
            cache: dict[str, Any] | None = None
            for side in sides:
                started = time.perf_counter()
                if side == "first":
                    cache = _capture(models, args, cache_dir)
                losses[side] = _train(_config(models, args, None if side == "live" else cache))
                times[side].append(time.perf_counter() - started)
                print(f"repeat {repeat} {side:>6}: {times[side][-1]:7.1f} s")
    summary: dict[str, Any] = {
        side: {"median_s": round(statistics.median(v), 2), "min": min(v), "max": max(v)}
        for side, v in times.items()
    }
    summary["second_over_first"] = round(
        summary["second"]["median_s"] / summary["first"]["median_s"], 3
    )
    summary["second_over_live"] = round(
        summary["second"]["median_s"] / summary["live"]["median_s"], 3
    )
    summary["last_loss"] = {side: values[-1] for side, values in losses.items()}
    print(json.dumps(summary, indent=2))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"setup": setup.key()},
        "summary": summary,
        "times": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
