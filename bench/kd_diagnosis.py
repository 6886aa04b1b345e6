"""Why KD does not beat fine-tuning on the instruction set: what the teacher's soft targets hold,
and where the student's held-out errors are.

    .venv/bin/python -m bench.kd_diagnosis          # about 2 minutes on 2 cores
    .venv/bin/python -m bench.kd_diagnosis --label-noise 0.2   # the fifth design's data

Two measurements on the ``bench/kd_quality.py`` set-up (same data, teacher and student):

1. The teacher's next-token distribution on the response tokens of the student's training
   records (exactly the targets every KD loss is given), at temperature 1 and 2: mean
   probability of the label, mean entropy, and the share of tokens where the label gets more
   than 0.99. Where the teacher is that sure, ``fkl``'s target is the one-hot label.
   With ``--label-noise``, the same statistics separately on the student's clean records, on
   its corrupted records against the wrong label they carry, and on those records against
   the correct answer they lost: how far the teacher disagrees with the noise.
2. Held-out exact match per task family for the teacher and for a ``ce`` and an ``fkl`` student
   (seed 0): which skills the student lacks.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.kd_quality import (
    RESULTS_DIR,
    BenchSettings,
    ensure_teacher,
    load_data,
    recipe_config,
    train_and_save,
)
from ml.data.examples import IGNORE_INDEX, collate, encode_example
from ml.data.formatting import to_prompt_response
from ml.data.instructions import generate_instruction_records, split_records
from ml.evaluation.generation import evaluate_model
from ml.loading import load_causal_lm, load_tokenizer


def _teacher_log_probs(
    teacher_dir: Path, records: list[tuple[str, str]], max_length: int, temperature: float = 1.0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch of 64 records: the teacher's shifted ``log_softmax(logits / T)`` ``(B, S, V)``,
    the labels ``(B, S)`` and the response-token mask ``(B, S)``."""
    model, tokenizer = load_causal_lm(teacher_dir), load_tokenizer(teacher_dir)
    model.eval()
    for start in range(0, len(records), 64):
        chunk = records[start : start + 64]
        batch = collate(
            [encode_example(tokenizer, p, r, max_length) for p, r in chunk],
            int(tokenizer.pad_token_id),
        )
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        log_p = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
        yield log_p, labels, labels != IGNORE_INDEX


@torch.no_grad()
def teacher_target_stats(
    teacher_dir: Path, records: list[tuple[str, str]], max_length: int, temperature: float
) -> dict[str, float]:
    """Statistics of ``softmax(teacher logits / T)`` over the records' response tokens."""
    p_label: list[torch.Tensor] = []
    entropy: list[torch.Tensor] = []
    for log_p, labels, keep in _teacher_log_probs(teacher_dir, records, max_length, temperature):
        kept = log_p[keep]
        p_label.append(kept.gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1).exp())
        entropy.append(-(kept.exp() * kept).sum(-1))
    p, h = torch.cat(p_label), torch.cat(entropy)
    return {
        "tokens": float(p.numel()),
        "mean_p_label": float(p.mean()),
        "mean_entropy_nats": float(h.mean()),
        "share_p_label_above_0.99": float((p > 0.99).float().mean()),
    }


@torch.no_grad()
def response_log_likelihoods(
    teacher_dir: Path, records: list[tuple[str, str]], max_length: int
) -> list[float]:
    """The teacher's log-likelihood of each record's whole response (sum over its tokens)."""
    sums: list[float] = []
    for log_p, labels, keep in _teacher_log_probs(teacher_dir, records, max_length):
        token = log_p.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        sums.extend((token * keep).sum(dim=1).tolist())
    return sums


def per_task_exact_match(
    model_dir: Path, held_out: list[dict[str, str]], settings: BenchSettings
) -> dict[str, float]:
    model, tokenizer = load_causal_lm(model_dir), load_tokenizer(model_dir)
    result = {}
    for task in sorted({r["task"] for r in held_out}):
        pairs = [to_prompt_response(r) for r in held_out if r["task"] == task]
        metrics = evaluate_model(model, tokenizer, pairs, max_length=settings.max_length,
                                 max_new_tokens=settings.max_new_tokens, batch_size=64)  # fmt: skip
        result[task] = metrics["exact_match"]
    return result


def train_student(settings: BenchSettings, teacher: Path, method: str, out: Path) -> Path:
    data = load_data(settings)
    return train_and_save(recipe_config(settings, data, teacher, method, seed=0), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--label-noise", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    settings = BenchSettings(label_noise=args.label_noise)
    noise = f"_noise{args.label_noise:g}" if args.label_noise else ""
    out = args.out or RESULTS_DIR / f"kd_diagnosis{noise}.json"
    work = args.work or Path(f"bench/.cache/kd_diagnosis{noise}")
    data = load_data(settings)
    teacher, _ = ensure_teacher(settings, data)
    student_records = data.train[: settings.student_records]
    report: dict[str, Any] = {"settings": settings.__dict__, "teacher_targets": {}}
    for temperature in (1.0, 2.0):
        stats = teacher_target_stats(teacher, student_records, settings.max_length, temperature)
        report["teacher_targets"][f"T={temperature:g}"] = stats
        print(f"teacher targets at T={temperature:g}: {stats}", flush=True)
    if settings.label_noise:
        clean = load_data(replace(settings, label_noise=0.0)).train[: settings.student_records]
        lost = [c for c, n in zip(clean, student_records, strict=True) if c != n]
        wrong = [n for c, n in zip(clean, student_records, strict=True) if c != n]
        kept = [n for c, n in zip(clean, student_records, strict=True) if c == n]
        report["noise"] = {"corrupted_records": len(wrong), "clean_records": len(kept)}
        for name, subset in (("clean", kept), ("wrong_label", wrong), ("correct_answer", lost)):
            stats = teacher_target_stats(teacher, subset, settings.max_length, 1.0)
            report["noise"][name] = stats
            print(f"teacher at T=1 on {name} ({len(subset)} records): {stats}", flush=True)
        on_wrong = response_log_likelihoods(teacher, wrong, settings.max_length)
        on_lost = response_log_likelihoods(teacher, lost, settings.max_length)
        prefers = sum(c > w for c, w in zip(on_lost, on_wrong, strict=True)) / len(wrong)
        report["noise"]["teacher_prefers_correct_answer"] = prefers
        print(f"teacher likelihood prefers the correct answer on {prefers:.3f} of them", flush=True)
    records = generate_instruction_records(settings.records, seed=0)
    held_out = split_records(records, settings.eval_fraction, settings.split_seed)[1]
    student_tasks = {}
    for record in data.train_records[: settings.student_records]:
        student_tasks[record["task"]] = student_tasks.get(record["task"], 0) + 1
    report["student_training_records_per_task"] = student_tasks
    report["held_out_records_per_task"] = {
        t: sum(r["task"] == t for r in held_out) for t in sorted({r["task"] for r in held_out})
    }
    report["held_out_exact_match"] = {"teacher": per_task_exact_match(teacher, held_out, settings)}
    for method in ("ce", "fkl"):
        student = train_student(settings, teacher, method, work / f"{method}-seed0")
        report["held_out_exact_match"][method] = per_task_exact_match(student, held_out, settings)
    print("\n| task | held-out records | teacher | ce (seed 0) | fkl (seed 0) |")
    print("| --- | --- | --- | --- | --- |")
    em = report["held_out_exact_match"]
    for task, count in report["held_out_records_per_task"].items():
        print(f"| {task} | {count} | {em['teacher'][task]:.3f} | {em['ce'][task]:.3f} "
              f"| {em['fkl'][task]:.3f} |")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
