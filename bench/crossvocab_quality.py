"""Cross-vocabulary KD against plain fine-tuning: the ``kd_quality`` teacher (tokenizer A,
vocab 512) teaches a half-depth student that reads with its own tokenizer B (vocab 384, trained
here on the same text), by ``dskd``, ``uld`` and ``mined``; ``ce`` fine-tunes the same student on
the labels. Same data, steps and held-out set as ``bench/kd_quality.py``; every KD method mixes
in CE with ``alpha_ce`` (the papers' recipes all do: DSKD 0.5, ULD CE + λ·ULD).

    python -m bench.crossvocab_quality [--seeds 0 1 2] [--steps N] [--alpha-ce 0.5]
    python -m bench.crossvocab_quality --warm-start-steps 400 --steps 200 --lr 3e-4
        # GKD's protocol, as in bench/kd_quality.py: every method from the seed's ce student
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from bench.kd_quality import (
    CACHE_DIR,
    METRICS,
    RESULTS_DIR,
    BenchData,
    BenchSettings,
    _recipe,
    ensure_teacher,
    load_data,
    markdown_table,
    summarise,
    train_and_save,
)
from ml.data.tokenizer import train_bpe_tokenizer
from ml.distillation.recipe import RecipeConfig
from ml.loading import init_student_from_config, save_model

METHODS = ("ce", "dskd", "uld", "mined")
STUDENT_VOCAB = 384


def ensure_student_base(settings: BenchSettings, data: BenchData, seed: int) -> Path:
    """A randomly initialised half-depth LLaMA with tokenizer B, one per seed."""
    noise = f"-noise{settings.label_noise:g}" if settings.label_noise else ""
    out = CACHE_DIR / f"crossvocab-student-v{STUDENT_VOCAB}{noise}-s{seed}"
    if (out / "config.json").exists():
        return out
    texts = [r["prompt"] + " " + r["response"] for r in data.train_records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=STUDENT_VOCAB)
    torch.manual_seed(seed)
    hidden = settings.teacher_hidden
    config = {"hidden_size": hidden, "intermediate_size": 4 * hidden,
              "num_hidden_layers": settings.teacher_layers // 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "max_position_embeddings": 256,
              "tie_word_embeddings": False, "pad_token_id": tokenizer.pad_token_id,
              "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    model = init_student_from_config(config, vocab_size=len(tokenizer))
    save_model(model, tokenizer, out)
    return out


def ensure_warm_student(
    settings: BenchSettings, data: BenchData, teacher: Path, student: Path, seed: int
) -> Path:
    """The seed's tokenizer-B student after ``warm_start_steps`` of ``ce`` at
    ``warm_start_lr`` (GKD's SFT start), built once."""
    out = CACHE_DIR / (
        f"{student.name}-warm{settings.warm_start_steps}-lr{settings.warm_start_lr:g}"
        f"-n{settings.student_records}"
    )
    if (out / "config.json").exists():
        return out
    warm = replace(settings, steps=settings.warm_start_steps, lr=settings.warm_start_lr)
    return train_and_save(_config(warm, data, teacher, student, "ce", seed), out)


def _config(settings: BenchSettings, data: BenchData, teacher: Path, student: Path,
            method: str, seed: int) -> RecipeConfig:  # fmt: skip
    return RecipeConfig(
        teacher_path=teacher, student_path=student, student_init=None,
        train_records=data.train[: settings.student_records], eval_records=data.held_out,
        loss=method, alpha_ce=settings.alpha_ce if method != "ce" else 0.0,
        max_steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
        warmup_steps=settings.warmup_steps, schedule=settings.schedule,
        max_length=settings.max_length, seed=seed, eval_max_examples=len(data.held_out),
        max_new_tokens=settings.max_new_tokens,
    )  # fmt: skip


def run_one(settings: BenchSettings, data: BenchData, teacher: Path, student: Path,
            method: str, seed: int) -> dict[str, Any]:  # fmt: skip
    recipe = _recipe(_config(settings, data, teacher, student, method, seed))
    recipe.setup()
    untrained = recipe.evaluate("student") if method == "ce" else None
    started = time.perf_counter()
    outcome = recipe.train()
    seconds = time.perf_counter() - started
    recipe.cleanup()
    held_out = {k: outcome.eval[k] for k in METRICS}
    run: dict[str, Any] = {"method": method, "seed": seed, "steps": outcome.step,
                           "held_out": held_out, "seconds": seconds}  # fmt: skip
    if untrained is not None:
        run["untrained"] = {k: untrained[k] for k in METRICS}
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--alpha-ce", type=float, default=0.5)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warm-start-steps", type=int, default=0)
    parser.add_argument(
        "--label-noise", type=float, default=0.0,
        help="share of training responses replaced by a wrong one of the same task",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    settings = replace(BenchSettings(), alpha_ce=args.alpha_ce)
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if args.lr is not None:
        settings = replace(settings, lr=args.lr)
    settings = replace(
        settings, warm_start_steps=args.warm_start_steps, label_noise=args.label_noise
    )
    suffix = f"_warm{args.warm_start_steps}" if args.warm_start_steps else ""
    suffix += f"_noise{args.label_noise:g}" if args.label_noise else ""
    out = args.out or RESULTS_DIR / f"crossvocab_quality{suffix}.json"
    started = time.perf_counter()
    data = load_data(settings)
    teacher_dir, teacher = ensure_teacher(settings, data)
    runs = []
    for seed in args.seeds:
        student = ensure_student_base(settings, data, seed)
        if settings.warm_start_steps:
            student = ensure_warm_student(settings, data, teacher_dir, student, seed)
        for method in args.methods:
            run = run_one(settings, data, teacher_dir, student, method, seed)
            runs.append(run)
            held = run["held_out"]
            print(f"==> {method:>5} seed {seed}: EM {held['exact_match']:.3f} ROUGE-L "
                  f"{held['rouge_l']:.3f} loss {held['loss']:.3f} ({run['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
    summary = summarise(runs)
    table = markdown_table(summary, teacher)
    print("\n" + table)
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": asdict(settings), "student_vocab": STUDENT_VOCAB,
                                    "runs": runs, "summary": summary, "table": table,
                                    "wall_seconds": wall}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
