"""Our KD step against TRL 1.16.0 on the same tiny LLaMA teacher and student, side by side.

    bash scripts/bench_env.sh                      # once: .venv-bench with TRL, the same torch
    .venv-bench/bin/python -m bench.trl_compare    # the figures in docs/BENCHMARKS.md

Scenarios (GKD: Agarwal et al. 2024, ICLR, "On-Policy Distillation of Language Models: Learning
from Self-Generated Mistakes", Eq. 1 and Algorithm 1):

- ``offline``: our :class:`ml.distillation.recipe.DistillRecipe` (loss ``jsd``, ``data_mode``
  offline) against ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0`` (dataset responses), both
  with the same ``beta``. Both reduce the generalized JSD as a mean over response tokens.
- ``onpolicy``: the recipe with ``data_mode: onpolicy`` against ``GKDTrainer`` with the same
  ``lmbda`` and ``max_new_tokens`` (sampling at temperature 1, no top-k/top-p on both sides), and
  ``trl.DistillationTrainer`` (prompt-only data, on-policy, its chunked JSD) with the same beta
  and ``max_completion_length``; ``ours_chunked`` is the recipe with ``kd_chunk_tokens``.

The sides live in :mod:`bench.trl_compare_sides`. Every side runs in its own fresh subprocess
(``--child``) so ``ru_maxrss`` (the child's peak resident memory) does not mix; sides alternate
order per repeat (ABAB, BABA). Each child loads the same teacher/student directories
(:mod:`bench.synthetic_models`, tokenizer trained here, no hub) and trains on the same records in
the same order (the recipe's epoch-0 permutation; TRL gets them pre-ordered with a sequential
sampler) with AdamW, constant lr, grad clipping 1.0.

Measures: tokens/s = non-padding input tokens of the training steps after ``warmup`` divided by
their wall time (model load excluded; generation included where a step generates), and, robust
to bursts of load from other processes, tokens per step over the median step time; peak RSS
recorded *before* the held-out evaluation, and the held-out divergence of the trained student
from the teacher, computed for every side by :func:`held_out_divergence` (this file, plain torch,
neither library's loss code) on the 32 records no side trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.synthetic_models import SpeedModels, SpeedSetup, build_speed_models, encoded_batches
from bench.trl_compare_sides import run_ours, run_trl_distill, run_trl_gkd
from ml.data.examples import IGNORE_INDEX

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = {
    "offline": ("ours", "trl_gkd"),
    "onpolicy": ("ours", "trl_gkd", "trl_distill", "ours_chunked"),
}


# ------------------------------------------------------------------ the one loss judge
def held_out_divergence(
    student: Any, teacher: Any, batch: dict[str, torch.Tensor], beta: float
) -> dict[str, float]:
    """Generalized JSD(beta) and forward KL(teacher || student), mean over response tokens.

    Plain torch on float32 log-softmaxes: ``m = beta p + (1 - beta) q``, ``JSD = beta KL(p||m) +
    (1 - beta) KL(q||m)`` with ``p`` the teacher and ``q`` the student (GKD Eq. 1).
    """
    student.eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        log_q = F.log_softmax(student(**inputs).logits[:, :-1].float(), dim=-1)
        log_p = F.log_softmax(teacher(**inputs).logits[:, :-1].float(), dim=-1)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    log_q, log_p = log_q[mask], log_p[mask]
    log_m = torch.logsumexp(
        torch.stack(
            [log_p + torch.log(torch.tensor(beta)), log_q + torch.log1p(torch.tensor(-beta))]
        ),
        dim=0,
    )
    jsd = beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - beta) * (
        log_q.exp() * (log_q - log_m)
    ).sum(-1)
    fkl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {"jsd": float(jsd.mean()), "fkl": float(fkl.mean())}


# --------------------------------------------------------------------------- child
def child(args: argparse.Namespace, models: SpeedModels) -> None:
    runners = {
        "ours": lambda: run_ours(models, args, chunked=False),
        "ours_chunked": lambda: run_ours(models, args, chunked=True),
        "trl_gkd": lambda: run_trl_gkd(models, args),
        "trl_distill": lambda: run_trl_distill(models, args),
    }
    out = runners[args.child]()
    stamps, tokens = out["stamps"], out["tokens"]
    w = args.warmup
    seconds = stamps[-1] - stamps[w]
    steps = [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=False)]
    held = encoded_batches(models, models.held_out, len(models.held_out), args.seq)[0]
    from ml.loading import load_causal_lm

    teacher = load_causal_lm(models.teacher_dir)  # fresh, the same for every side
    result = {
        "side": args.child,
        "scenario": args.scenario,
        "steps": len(stamps) - 1,
        "tokens_per_s": sum(tokens[w:]) / seconds,
        "train_seconds": seconds,
        # Robust to bursts of load from other processes: tokens per step / median step time.
        "median_step_tokens_per_s": statistics.median(tokens[w:]) / statistics.median(steps[w:]),
        "step_seconds": [round(x, 4) for x in steps],
        "tokens_per_step": tokens,
        "losses": out["losses"],
        "rss_loaded_mb": out["rss_loaded_mb"],
        "peak_rss_mb": out["peak_rss_mb"],
        "held_out": held_out_divergence(out["student"], teacher, held, args.beta),
    }
    args.child_out.write_text(json.dumps(result))


# ------------------------------------------------------------------------ orchestrator
def _spawn(side: str, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        command = [
            sys.executable,
            "-m",
            "bench.trl_compare",
            "--child",
            side,
            "--scenario",
            scenario,
            "--child-out",
            tmp.name,
        ] + _shared_flags(args)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout)[-3000:]
            print(f"{scenario}/{side} failed (rc {done.returncode}):\n{tail}", file=sys.stderr)
            return {"side": side, "scenario": scenario, "error": tail[-1500:]}
        result = json.loads(Path(tmp.name).read_text())
    result["child_wall_s"] = time.perf_counter() - started
    return result


def _shared_flags(args: argparse.Namespace) -> list[str]:
    names = (
        "steps",
        "warmup",
        "batch",
        "seq",
        "vocab",
        "hidden",
        "teacher_layers",
        "student_layers",
        "teacher_ce_steps",
        "beta",
        "lmbda",
        "max_new_tokens",
        "lr",
        "chunk_tokens",
        "threads",
    )
    return [x for n in names for x in (f"--{n.replace('_', '-')}", str(getattr(args, n)))]


def _quiet_tokens_per_s(run: dict[str, Any], warmup: int) -> float:
    """Tokens per step over the first-quartile step time: the step's cost when the shared cores
    were least contended (a step cannot run faster than its own work allows)."""
    steps = sorted(run["step_seconds"][warmup:])
    return statistics.median(run["tokens_per_step"][warmup:]) / steps[len(steps) // 4]


def _summarise(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for scenario, sides in SCENARIOS.items():
        per: dict[str, Any] = {}
        for side in sides:
            ok = [
                r
                for r in runs
                if r["scenario"] == scenario and r["side"] == side and "error" not in r
            ]
            bad = [
                r for r in runs if r["scenario"] == scenario and r["side"] == side and "error" in r
            ]
            if not ok:
                per[side] = {"error": bad[0]["error"][-600:] if bad else "not run"}
                continue
            rates = [r["tokens_per_s"] for r in ok]
            steady = [r["median_step_tokens_per_s"] for r in ok]
            quiet = [_quiet_tokens_per_s(r, warmup) for r in ok]
            per[side] = {
                "median_tokens_per_s": round(statistics.median(rates), 1),
                "median_step_tokens_per_s": [round(x, 1) for x in steady],
                "quiet_tokens_per_s": [round(x, 1) for x in quiet],
                "tokens_per_s": [round(x, 1) for x in rates],
                "median_peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in ok), 1),
                "median_rss_after_load_mb": round(
                    statistics.median(r["rss_loaded_mb"] for r in ok), 1
                ),
                "held_out_jsd": [round(r["held_out"]["jsd"], 5) for r in ok],
                "held_out_fkl": [round(r["held_out"]["fkl"], 5) for r in ok],
                "first_train_loss": [round(r["losses"][0], 5) if r["losses"] else None for r in ok],
                "last_train_loss": [round(r["losses"][-1], 5) if r["losses"] else None for r in ok],
            }
        ours = per.get("ours", {})
        for side in sides[1:]:
            other = per[side]
            if "error" in other or "error" in ours:
                continue
            per[f"ratio_ours_over_{side}"] = {
                "tokens_per_s": round(
                    ours["median_tokens_per_s"] / other["median_tokens_per_s"], 3
                ),
                "quiet_tokens_per_s": round(
                    max(ours["quiet_tokens_per_s"]) / max(other["quiet_tokens_per_s"]), 3
                ),
                "median_step_tokens_per_s": round(
                    statistics.median(ours["median_step_tokens_per_s"])
                    / statistics.median(other["median_step_tokens_per_s"]),
                    3,
                ),
                "peak_rss": round(ours["median_peak_rss_mb"] / other["median_peak_rss_mb"], 3),
            }
        summary[scenario] = per
    return summary


def _load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--teacher-ce-steps", type=int, default=30)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--lmbda", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--chunk-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenarios", default="offline,onpolicy")
    parser.add_argument("--sides", default="", help="comma list to restrict the sides")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scenario", default="offline", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "trl_compare.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = SpeedSetup(
        vocab_size=args.vocab,
        hidden=args.hidden,
        teacher_layers=args.teacher_layers,
        student_layers=args.student_layers,
        max_length=args.seq,
        records=args.batch * args.steps,
        teacher_ce_steps=args.teacher_ce_steps,
    )
    models = build_speed_models(setup)  # built once here, then read by every child
    if args.child:
        child(args, models)
        return
    started, load_before = time.perf_counter(), _load_average()
    runs: list[dict[str, Any]] = []
    only = set(filter(None, args.sides.split(",")))
    for scenario in args.scenarios.split(","):
        sides = [s for s in SCENARIOS[scenario] if not only or s in only]
        for repeat in range(args.repeats):
            for side in sides if repeat % 2 == 0 else sides[::-1]:
                runs.append(_spawn(side, scenario, args))
                r = runs[-1]
                shown = (
                    "FAILED"
                    if "error" in r
                    else (
                        f"{r['tokens_per_s']:7.0f} tok/s  peak {r['peak_rss_mb']:6.0f} MB  "
                        f"held-out jsd {r['held_out']['jsd']:.4f}"
                    )
                )
                print(f"{scenario:>8} repeat {repeat} {side:>12}: {shown}", flush=True)
    summary = _summarise(runs, args.warmup)
    print(json.dumps(summary, indent=2))
    import transformers
    import trl

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads, "
        f"no GPU, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}",
        "load_average_before_after": [load_before, _load_average()],
        "total_seconds": round(time.perf_counter() - started, 1),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"setup": setup.key()},
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
