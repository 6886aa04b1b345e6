"""Knowledge injection: prompt distillation against fine-tuning on the documents and on Q&A.

    .venv/bin/python -m bench.injection_quality          # the table in docs/BENCHMARKS.md

The set-up, fixed before any method ran and the same for every method:

- base model: :func:`ml.injection.facts_base.build_injection_base` (a LLaMA-style model trained
  on the CPU on closed-book facts about KNOWN people and open-book reading examples), built once
  and cached under ``bench/.cache/injection_quality/`` (keyed by its settings).
- documents: one two-sentence document per INJECTED person (24), never in the base's training.
- training pairs: :func:`ml.injection.qa.generate_qa_pairs` of the documents (the service's
  path for a job that sends only documents): ``"X was born in" → city``, ``"X works for" →
  company``.
- held-out questions: the other two paraphrase templates of each relation
  (:data:`ml.injection.facts_base.HELD_OUT_TEMPLATES`), never used for a training pair; asked
  closed book. Unchanged facts: the first-template questions about every known person.
- training: :func:`ml.injection.run.run_injection` with the default LoRA adapter (r 16, alpha 32
  on every attention and MLP projection), the same steps, batch, lr and schedule for every
  method; prompt distillation with forward KL, temperature 1 and the pairs' answers.
- seeds: the run seed changes the data order and the adapter's initialisation.

Metrics: exact match of greedy answers and teacher-forced token accuracy. Two verdicts per
pair of methods:

- *spread*: ``|delta| > 2 * sqrt((s_a^2 + s_b^2) / 2)`` (sample standard deviations over the
  seeds): the gap exceeds two seed-to-seed spreads. It does not shrink with more seeds.
- *paired* (the test for "ahead beyond seed noise", fixed before the confirmatory run on seeds
  8-27): both methods run with the same seed share data order and adapter initialisation, so the
  per-seed differences ``d_s`` are compared: beyond noise when the 95% interval
  ``mean(d) ± t(0.975, n-1) * sd(d) / sqrt(n)`` excludes 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ml.injection.evaluation import score_pairs
from ml.injection.facts_base import (
    build_injection_base,
    held_out_questions,
    injection_split,
    person_document,
    unchanged_questions,
)
from ml.injection.params import METHODS
from ml.injection.qa import generate_qa_pairs
from ml.injection.run import run_injection
from ml.loading import load_causal_lm, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "bench" / ".cache" / "injection_quality"
RESULTS = ROOT / "bench" / "results" / "injection_quality.json"
TRAINING = {"steps": 150, "lr": 2e-3, "batch_size": 16, "warmup_steps": 10}
# The first design's prompt distillation, pinned here (the service's defaults became the
# sampled-answers setting after the confirmatory run; docs/BENCHMARKS.md).
FIRST_DESIGN = {"answers": "given", "samples_per_question": 1, "temperature": 1.0}
METRICS = ("held_out", "unchanged", "trained")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def evaluate(model: Any, tokenizer: Any, sets: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    return {name: score_pairs(model, tokenizer, pairs) for name, pairs in sets.items()}


def run_bench(
    seeds: list[int], steps: int, distillation: dict[str, Any] | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    base_dir = CACHE_DIR / "base"
    base = build_injection_base(base_dir, log=_say)
    split = injection_split(0)
    documents = [person_document(split.world, person) for person in split.injected]
    pairs = generate_qa_pairs(documents)
    held_out = held_out_questions(split)
    sets = {
        "held_out": [(q, a) for q, a, _ in held_out],
        "unchanged": unchanged_questions(split),
        "trained": [(p.question, p.answer) for p in pairs],
    }
    tokenizer = load_tokenizer(base_dir)
    reference = load_causal_lm(base_dir)
    references = {
        "base (closed book)": evaluate(reference, tokenizer, sets),
        "base reading the document (the teacher)": {
            "held_out": score_pairs(
                reference,
                tokenizer,
                sets["held_out"],
                documents=[documents[i] for _, _, i in held_out],
            )
        },
    }
    params = {**TRAINING, "steps": steps}
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for method in METHODS:
            model = load_causal_lm(base_dir)
            tick = time.perf_counter()
            outcome = run_injection(
                model,
                tokenizer,
                method=method,
                documents=documents,
                qa_pairs=pairs if method != "sft_docs" else None,
                params={
                    **params,
                    "seed": seed,
                    **(
                        {**FIRST_DESIGN, **(distillation or {})}
                        if method == "prompt_distillation"
                        else {}
                    ),
                },
                lora=None,
            )
            scores = evaluate(outcome.model, tokenizer, sets)
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "seconds": time.perf_counter() - tick,
                    "final_loss": outcome.history[-1]["loss"],
                    "scores": scores,
                }
            )
            _say(
                f"seed {seed} {method:20s} held-out EM {scores['held_out']['exact_match']:.3f}"
                f" unchanged EM {scores['unchanged']['exact_match']:.3f}"
                f" trained EM {scores['trained']['exact_match']:.3f}"
            )
    summary = summarise(runs)
    return {
        "base": base,
        "references": references,
        "training": params,
        "distillation_params": distillation or {},
        "seeds": seeds,
        "documents": len(documents),
        "training_pairs": len(pairs),
        "runs": runs,
        "summary": summary,
        "table": table(summary, references),
        "verdicts": verdicts(summary) + paired_verdicts(runs),
        "wall_seconds": time.perf_counter() - started,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{method: {metric: {"exact_match": [mean, std], "teacher_forced": [mean, std]}}}``."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        out[method] = {
            metric: {
                way: list(_mean_std([r["scores"][metric][way] for r in mine]))
                for way in ("exact_match", "teacher_forced")
            }
            for metric in METRICS
        }
    return out


# two-sided 95% quantiles of Student's t by degrees of freedom (30 and more: 2.0)
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
T_975 |= {10: 2.23, 11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11}
T_975 |= {18: 2.10, 19: 2.09, 20: 2.09, 21: 2.08, 22: 2.07, 23: 2.07, 24: 2.06, 25: 2.06}
T_975 |= {26: 2.06, 27: 2.05, 28: 2.05, 29: 2.05}


def paired_verdicts(runs: list[dict[str, Any]]) -> list[str]:
    """Per-seed differences of prompt distillation against each baseline (module docstring)."""
    by_seed: dict[int, dict[str, float]] = {}
    for run in runs:
        score = run["scores"]["held_out"]["exact_match"]
        by_seed.setdefault(run["seed"], {})[run["method"]] = score
    lines = []
    for rival in ("sft_docs", "sft_qa"):
        diffs = [s["prompt_distillation"] - s[rival] for s in by_seed.values() if rival in s]
        if len(diffs) < 2:
            continue
        mean, sd = _mean_std(diffs)
        half = T_975.get(len(diffs) - 1, 2.0) * sd / len(diffs) ** 0.5
        beyond = "beyond noise" if abs(mean) > half else "within noise"
        wins = sum(d > 0 for d in diffs)
        lines.append(
            f"held_out EM, paired over {len(diffs)} seeds: prompt_distillation - {rival} = "
            f"{mean:+.3f} (95% interval ±{half:.3f}; ahead on {wins} seeds): {beyond}"
        )
    return lines


def verdicts(summary: dict[str, Any]) -> list[str]:
    lines = []
    for rival in ("sft_docs", "sft_qa"):
        for metric in ("held_out", "unchanged"):
            (a, sa), (b, sb) = (
                summary["prompt_distillation"][metric]["exact_match"],
                summary[rival][metric]["exact_match"],
            )
            noise = 2 * ((sa**2 + sb**2) / 2) ** 0.5
            delta = a - b
            beyond = "beyond noise" if abs(delta) > noise else "within noise"
            lines.append(
                f"{metric} EM: prompt_distillation - {rival} = {delta:+.3f} "
                f"(2-sigma noise {noise:.3f}): {beyond}"
            )
    return lines


def table(summary: dict[str, Any], references: dict[str, Any]) -> str:
    head = (
        "| method | held-out EM | held-out TF | unchanged EM | unchanged TF "
        "| trained-question EM |\n"
        "|---|---|---|---|---|---|"
    )
    rows = [head]
    for name, scores in references.items():
        cells = []
        for metric in ("held_out", "unchanged"):
            for way in ("exact_match", "teacher_forced"):
                cells.append(f"{scores[metric][way]:.3f}" if metric in scores else "–")
        trained = scores.get("trained")
        cells.append(f"{trained['exact_match']:.3f}" if trained else "–")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    for method, scores in summary.items():
        cells = [
            f"{scores[metric][way][0]:.3f} ± {scores[metric][way][1]:.3f}"
            for metric in ("held_out", "unchanged")
            for way in ("exact_match", "teacher_forced")
        ]
        cells.append(
            f"{scores['trained']['exact_match'][0]:.3f} ± {scores['trained']['exact_match'][1]:.3f}"
        )
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0,
        help="seeds first-seed .. first-seed + seeds - 1 (fresh seeds for a confirmatory run)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=TRAINING["steps"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--distillation-params",
        type=json.loads,
        default=None,
        help='extra prompt_distillation params, e.g. \'{"answers": "sampled"}\'',
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run_bench(
        list(range(args.first_seed, args.first_seed + args.seeds)),
        args.steps,
        args.distillation_params,
    )
    results["command"] = "python -m bench.injection_quality " + " ".join(argv or sys.argv[1:])
    print(results["table"])
    print("\n".join(results["verdicts"]))
    print(f"wall time {results['wall_seconds']:.0f} s, {args.threads} torch thread(s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
