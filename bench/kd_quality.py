"""Held-out quality of every same-vocabulary KD method against plain fine-tuning (``ce``).

    .venv/bin/python -m bench.kd_quality                     # the table in docs/BENCHMARKS.md
    .venv/bin/python -m bench.kd_quality --student-init copy     # the rejected design
    .venv/bin/python -m bench.kd_quality --quick             # ce vs fkl, 1 seed, a minute
    .venv/bin/python -m bench.kd_quality --warm-start-steps 400 --steps 200 --lr 3e-4
        # GKD's protocol: every method continues from the same SFT student

The set-up, fixed before any method ran and the same for every method:

- data: :func:`ml.data.instructions.generate_instruction_records` (``records`` of them, seed 0)
  split by :func:`split_records`, which holds out whole prompts: no held-out prompt occurs in any
  training record. Every run is evaluated on the same held-out records.
- teacher: :func:`ml.data.demo_teacher.build_demo_teacher` on *all* training records, built once
  and cached under ``bench/.cache/`` (keyed by its settings).
- student: half the teacher's depth and the same width, randomly initialised (``random``, the
  default). ``copy`` (every 2nd teacher layer, the service's default student) is available, but
  on this set the copied student already scores within 0.03 EM of the teacher before training,
  so fine-tuning it on a subset measures forgetting rather than learning (docs/BENCHMARKS.md).
  The student trains on the first ``student_records`` training records only (the same subset for
  every method and seed): the regime where a teacher, trained on 5x more data, has something to
  give beyond the labels.
- training: :class:`ml.distillation.recipe.DistillRecipe`, identical hyperparameters for every
  method (steps, batch, lr, schedule, ``alpha_ce``, temperature); each method only gets its own
  documented default parameters (:data:`METHOD_PARAMS`). ``ce`` also loads the teacher (unused
  by its loss) so that the seeded student initialisation is the same draw for every method.
- seeds: the recipe seed changes the data order (and, for ``random``, the student's init).
- ``warm_start_steps`` > 0 (GKD's protocol, Agarwal et al. 2024, Sec. 4: distillation starts
  from a supervised fine-tuned student): per seed, the student is first fine-tuned with ``ce``
  for that many steps at ``warm_start_lr`` (cached), and every method -- ``ce`` included, which
  then simply goes on fine-tuning -- continues from that checkpoint for ``steps`` at ``lr``.

Significance: per method, ``delta = mean(method) - mean(ce)`` over the seeds; it is *beyond
noise* when ``|delta| > 2 * sqrt((s_method^2 + s_ce^2) / 2)`` (sample standard deviations), and
the Welch t statistic is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ml.data.demo_teacher import build_demo_teacher
from ml.data.formatting import to_prompt_response
from ml.data.instructions import corrupt_responses, generate_instruction_records, split_records
from ml.distillation.data_modes import seqkd_records
from ml.distillation.losses import resolve_kd_params
from ml.distillation.recipe import DistillRecipe, RecipeConfig
from ml.distillation.sampling import GenerationSettings
from ml.distillation.taid import TAID_SCHEDULE_PARAMS
from ml.evaluation.generation import evaluate_model
from ml.loading import load_causal_lm, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "bench" / ".cache" / "kd_quality"
RESULTS_DIR = ROOT / "bench" / "results"

METHODS: tuple[str, ...] = ("ce", "fkl", "rkl", "jsd", "srkl", "akl", "atkd", "taid")
#: Each method's own documented defaults (ml/distillation/losses.py, taid.py), written out.
METHOD_PARAMS: dict[str, dict[str, float]] = {
    "ce": {},
    "fkl": {},
    "rkl": {},
    "jsd": {"beta": 0.5},
    "srkl": {"alpha": 0.1},
    "akl": resolve_kd_params("akl", {}),
    "atkd": resolve_kd_params("atkd", {}),
    "taid": dict(TAID_SCHEDULE_PARAMS),
    # Kim & Rush 2016's sequence-level KD: plain CE on the teacher's greedy responses. Only
    # with transfer prompts (below), where it is the hard-label control for the soft losses.
    "seqkd": {},
}
METRICS = ("exact_match", "rouge_l", "loss")


@dataclass(frozen=True)
class BenchSettings:
    """Everything that decides the numbers; written into the results JSON."""

    records: int = 4400  # generated records, before the held-out split
    eval_fraction: float = 0.1  # share of distinct prompts held out, per task
    split_seed: int = 0
    teacher_steps: int = 1000
    teacher_hidden: int = 128
    teacher_layers: int = 4
    student_init: str = "random"  # random (same width, half depth) | copy (every 2nd layer)
    student_records: int = 800  # the student's training subset: the first N training records
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    schedule: str = "cosine"
    alpha_ce: float = 0.0  # KD runs use the KD loss alone: the comparison is loss against loss
    temperature: float = 1.0
    max_length: int = 64
    eval_examples: int = 1000  # at most this many held-out records (all of them by default)
    max_new_tokens: int = 12
    warm_start_steps: int = 0  # > 0: every method continues from a ce-trained student (GKD)
    warm_start_lr: float = 1e-3
    # > 0: this many training prompts after the student's own records, *without* their
    # responses, form a transfer set (Hinton et al. 2015, Sec. 2): the teacher answers them
    # (greedy, cached) and every method but ``ce`` trains on labels + transfer set.
    transfer_prompts: int = 0
    # > 0: this share of the *training* records (teacher's and student's alike) get a wrong
    # response of the same task (:func:`corrupt_responses`, seed 0), as real instruction sets
    # carry; the held-out references stay correct.
    label_noise: float = 0.0

    def data_key(self) -> str:
        noise = f"-noise{self.label_noise:g}" if self.label_noise else ""
        return f"r{self.records}-f{self.eval_fraction}-s{self.split_seed}{noise}"

    def teacher_key(self) -> str:
        return (
            f"teacher-{self.data_key()}"
            f"-h{self.teacher_hidden}-l{self.teacher_layers}-n{self.teacher_steps}"
        )


@dataclass(frozen=True)
class BenchData:
    train_records: list[dict[str, str]]  # the teacher's training records (un-templated)
    train: list[tuple[str, str]]  # the same, as (templated prompt, response) pairs
    held_out: list[tuple[str, str]]
    held_out_prompts: int  # distinct held-out prompts


def load_data(settings: BenchSettings) -> BenchData:
    records = generate_instruction_records(settings.records, seed=0)
    train, held_out = split_records(records, settings.eval_fraction, settings.split_seed)
    if settings.label_noise:
        train, _ = corrupt_responses(train, settings.label_noise, seed=0)
    held_out = held_out[: settings.eval_examples]
    return BenchData(
        train_records=train,
        train=[to_prompt_response(r) for r in train],
        held_out=[to_prompt_response(r) for r in held_out],
        held_out_prompts=len({r["prompt"] for r in held_out}),
    )


def ensure_teacher(
    settings: BenchSettings, data: BenchData, cache_dir: Path = CACHE_DIR
) -> tuple[Path, dict[str, Any]]:
    """The cached teacher's directory and stats (train seconds, held-out metrics)."""
    out = cache_dir / settings.teacher_key()
    stats_path = out / "bench_stats.json"
    if stats_path.exists():
        return out, json.loads(stats_path.read_text())
    _say(f"training the teacher ({settings.teacher_steps} steps) into {out}")
    trained = build_demo_teacher(
        out,
        train_records=data.train_records,
        steps=settings.teacher_steps,
        seed=0,
        hidden_size=settings.teacher_hidden,
        num_layers=settings.teacher_layers,
        log=lambda line: _say(f"  teacher {line}"),
    )
    model = load_causal_lm(out)
    stats: dict[str, Any] = dict(trained)
    stats["parameters"] = model.num_parameters()
    stats["held_out"] = evaluate_model(
        model,
        load_tokenizer(out),
        data.held_out,
        max_length=settings.max_length,
        max_new_tokens=settings.max_new_tokens,
        batch_size=64,
    )
    stats_path.write_text(json.dumps(stats, indent=2))
    return out, stats


def ensure_transfer_set(
    settings: BenchSettings, data: BenchData, teacher: Path, cache_dir: Path = CACHE_DIR
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The transfer set: the ``transfer_prompts`` training prompts after the student's records,
    answered by the teacher (greedy, at most ``max_new_tokens``), built once; and how often the
    teacher's answer equals the withheld reference."""
    start, end = settings.student_records, settings.student_records + settings.transfer_prompts
    out = cache_dir / f"transfer-{settings.teacher_key()}-{start}-{end}.json"
    if not out.exists():
        answered = seqkd_records(
            load_causal_lm(teacher),
            load_tokenizer(teacher),
            data.train[start:end],
            GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=0.0),
            batch_size=64,
            max_length=settings.max_length,
        )
        out.write_text(json.dumps(answered))
    transfer = [(p, r) for p, r in json.loads(out.read_text())]
    withheld = data.train[start:end]
    agree = sum(a == b for (_, a), (_, b) in zip(transfer, withheld, strict=True))
    return transfer, {"prompts": len(transfer), "teacher_equals_withheld": agree / len(transfer)}


def _student_init(settings: BenchSettings) -> dict[str, Any]:
    if settings.student_init == "copy":
        return {"from_teacher_layers": 2}
    if settings.student_init == "random":
        hidden = settings.teacher_hidden
        return {
            "config": {
                "hidden_size": hidden,
                "intermediate_size": 4 * hidden,
                "num_hidden_layers": settings.teacher_layers // 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "max_position_embeddings": 256,
                "tie_word_embeddings": False,
            }
        }
    raise ValueError(f"student_init must be 'copy' or 'random', got {settings.student_init!r}")


def recipe_config(
    settings: BenchSettings,
    data: BenchData,
    teacher: Path,
    method: str,
    seed: int,
    *,
    student_path: Path | None = None,
    train_records: list[tuple[str, str]] | None = None,
) -> RecipeConfig:
    return RecipeConfig(
        # ce ignores the teacher's logits but still loads it: the tokenizer and the seeded
        # student draw then come out exactly as for the KD methods.
        teacher_path=teacher,
        student_path=student_path,
        student_init=None if student_path is not None else _student_init(settings),
        train_records=train_records or data.train[: settings.student_records],
        eval_records=data.held_out,
        loss="ce" if method == "seqkd" else method,
        loss_params=dict(METHOD_PARAMS[method]),
        temperature=settings.temperature,
        alpha_ce=settings.alpha_ce if method != "ce" else 0.0,
        max_steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        schedule=settings.schedule,
        max_length=settings.max_length,
        seed=seed,
        eval_max_examples=len(data.held_out),
        max_new_tokens=settings.max_new_tokens,
    )


def _recipe(config: RecipeConfig) -> DistillRecipe:
    return DistillRecipe(
        config,
        metrics_sink=lambda _points: None,
        event_sink=lambda _level, _message, _data: None,
        should_stop=lambda: False,
        on_checkpoint=lambda _step, _path: None,
    )


def train_and_save(config: RecipeConfig, out: Path) -> Path:
    """Train a student with ``config`` to its last step and save it into ``out``."""
    recipe = _recipe(config)
    recipe.setup()
    recipe.train()
    recipe.save_student(out)
    recipe.cleanup()
    return out


def ensure_warm_student(
    settings: BenchSettings, data: BenchData, teacher: Path, seed: int, cache_dir: Path = CACHE_DIR
) -> Path:
    """The seed's ``ce``-trained starting student (GKD's SFT initialisation), built once."""
    out = cache_dir / (
        f"warm-{settings.teacher_key()}-{settings.student_init}-n{settings.student_records}"
        f"-w{settings.warm_start_steps}-lr{settings.warm_start_lr:g}-s{seed}"
    )
    if (out / "config.json").exists():
        return out
    warm = replace(settings, steps=settings.warm_start_steps, lr=settings.warm_start_lr)
    return train_and_save(recipe_config(warm, data, teacher, "ce", seed), out)


def run_one(
    settings: BenchSettings,
    data: BenchData,
    teacher: Path,
    method: str,
    seed: int,
    *,
    with_untrained: bool = False,
    student_path: Path | None = None,
    train_records: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Train one student; its held-out metrics, and the untrained student's when asked
    (with ``student_path``, "untrained" is that starting student)."""
    recipe = _recipe(
        recipe_config(
            settings,
            data,
            teacher,
            method,
            seed,
            student_path=student_path,
            train_records=train_records,
        )  # fmt: skip
    )
    started = time.perf_counter()
    recipe.setup()
    untrained = recipe.evaluate("student") if with_untrained else None
    trained_at = time.perf_counter()
    outcome = recipe.train()
    seconds = time.perf_counter() - trained_at
    recipe.cleanup()
    result: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "steps": outcome.step,
        "held_out": {k: outcome.eval[k] for k in METRICS},
        "seconds": seconds,
        "setup_seconds": trained_at - started,
    }
    if untrained is not None:
        result["untrained"] = {k: untrained[k] for k in METRICS}
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _stat(values: list[float]) -> dict[str, float]:
    mean, std = _mean_std(values)
    return {"mean": mean, "std": std}


def compare(method: list[float], baseline: list[float]) -> dict[str, Any]:
    """``delta``, Welch ``t`` (None when undefined) and the verdict of the 2-sigma rule."""
    m_mean, m_std = _mean_std(method)
    b_mean, b_std = _mean_std(baseline)
    delta = m_mean - b_mean
    pooled = math.sqrt((m_std**2 + b_std**2) / 2)
    scale = math.sqrt(m_std**2 / len(method) + b_std**2 / len(baseline))
    t = delta / scale if scale > 0 else None
    if len(method) < 2 or len(baseline) < 2:
        verdict = "one seed: no noise estimate"
    elif abs(delta) > 2 * pooled:
        verdict = "better, beyond noise" if delta > 0 else "worse, beyond noise"
    else:
        verdict = "within noise"
    return {"delta": delta, "pooled_std": pooled, "welch_t": t, "verdict": verdict}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: mean/std of each metric, and the comparison with ``ce``."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    baseline = by_method.get("ce", [])
    summary: dict[str, Any] = {}
    for method, method_runs in by_method.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in method_runs]}
        for metric in METRICS:
            values = [r["held_out"][metric] for r in method_runs]
            entry[metric] = _stat(values)
            if baseline and method != "ce":
                base = [r["held_out"][metric] for r in baseline]
                entry[f"{metric}_vs_ce"] = compare(values, base)
        entry["seconds_per_run"] = statistics.fmean(r["seconds"] for r in method_runs)
        summary[method] = entry
    untrained = [r["untrained"] for r in baseline if "untrained" in r]
    if untrained:
        summary["untrained student"] = {
            metric: _stat([u[metric] for u in untrained]) for metric in METRICS
        }
    return summary


def _pm(stat: dict[str, float], digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_table(summary: dict[str, Any], teacher: dict[str, Any]) -> str:
    lines = [
        "| model | exact match | ROUGE-L | held-out loss | Δ EM vs ce (Welch t) | EM verdict "
        "| Δ ROUGE-L vs ce (Welch t) | train s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    held = teacher["held_out"]
    lines.append(
        f"| teacher ({teacher['parameters'] / 1e6:.2f} M) | {held['exact_match']:.3f} "
        f"| {held['rouge_l']:.3f} | {held['loss']:.3f} | | | | |"
    )
    if "untrained student" in summary:
        u = summary["untrained student"]
        lines.append(
            f"| untrained student | {_pm(u['exact_match'])} | {_pm(u['rouge_l'])} "
            f"| {_pm(u['loss'])} | | | | |"
        )
    for method in [m for m in summary if m != "untrained student"]:  # in run order, ce first
        s = summary[method]
        em_cmp, rl_cmp = s.get("exact_match_vs_ce"), s.get("rouge_l_vs_ce")
        em_delta = _delta(em_cmp) if em_cmp else ""
        rl_delta = _delta(rl_cmp) if rl_cmp else ""
        verdict = em_cmp["verdict"] if em_cmp else "(baseline)"
        params = METHOD_PARAMS.get(method, {})
        name = method + (f" ({_params(params)})" if params else "")
        lines.append(
            f"| {name} | {_pm(s['exact_match'])} | {_pm(s['rouge_l'])} | {_pm(s['loss'])} "
            f"| {em_delta} | {verdict} | {rl_delta} | {s['seconds_per_run']:.0f} |"
        )
    return "\n".join(lines)


def _delta(cmp: dict[str, Any]) -> str:
    t = cmp["welch_t"]
    return f"{cmp['delta']:+.3f} ({'n/a' if t is None else f'{t:+.1f}'})"


def _params(params: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in params.items())


def run_bench(
    settings: BenchSettings,
    *,
    methods: tuple[str, ...] = METHODS,
    seeds: tuple[int, ...] = (0, 1, 2),
    cache_dir: Path = CACHE_DIR,
) -> dict[str, Any]:
    """Every (method, seed) run, in seed-major order; returns the results document."""
    started = time.perf_counter()
    data = load_data(settings)
    teacher_dir, teacher = ensure_teacher(settings, data, cache_dir)
    _say(
        f"teacher held-out EM {teacher['held_out']['exact_match']:.3f} on {len(data.held_out)} "
        f"records ({data.held_out_prompts} distinct prompts); student trains on "
        f"{min(settings.student_records, len(data.train))} of {len(data.train)} records"
    )
    labeled_and_transfer = None
    transfer_stats: dict[str, Any] = {}
    if settings.transfer_prompts:
        transfer, transfer_stats = ensure_transfer_set(settings, data, teacher_dir, cache_dir)
        labeled_and_transfer = data.train[: settings.student_records] + transfer
        _say(f"transfer set: {transfer_stats}")
    elif "seqkd" in methods:
        raise ValueError("seqkd is the control of a transfer set: give transfer_prompts")
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        start = None
        if settings.warm_start_steps > 0:
            start = ensure_warm_student(settings, data, teacher_dir, seed, cache_dir)
        for method in methods:
            run = run_one(
                settings,
                data,
                teacher_dir,
                method,
                seed,
                with_untrained=method == "ce",
                student_path=start,
                train_records=None if method == "ce" else labeled_and_transfer,
            )
            runs.append(run)
            held = run["held_out"]
            _say(
                f"{method:>5} seed {seed}: EM {held['exact_match']:.3f} ROUGE-L "
                f"{held['rouge_l']:.3f} loss {held['loss']:.3f} ({run['seconds']:.0f} s)"
            )
    summary = summarise(runs)
    return {
        "settings": asdict(settings),
        "method_params": {m: METHOD_PARAMS[m] for m in methods},
        "seeds": list(seeds),
        "held_out_records": len(data.held_out),
        "held_out_prompts": data.held_out_prompts,
        "teacher_train_records": len(data.train),
        "teacher": teacher,
        "transfer_set": transfer_stats,
        "runs": runs,
        "summary": summary,
        "table": markdown_table(summary, teacher),
        "wall_seconds": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
    }


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--methods", nargs="+", choices=(*METHODS, "seqkd"), default=None,
        help="default: every method, and seqkd too with --transfer-prompts",
    )  # fmt: skip
    parser.add_argument(
        "--transfer-prompts",
        type=int,
        default=None,
        help="unlabelled training prompts the teacher answers for every method but ce",
    )
    parser.add_argument("--student-init", choices=("random", "copy"), default="random")
    parser.add_argument("--student-records", type=int, default=None)
    parser.add_argument(
        "--alpha-ce", type=float, default=None, help="CE mix weight for every KD method (default 0)"
    )
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument(
        "--label-noise", type=float, default=None,
        help="share of training responses replaced by a wrong one of the same task (0)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=None, help="KD temperature (1)")
    parser.add_argument(
        "--warm-start-steps",
        type=int,
        default=None,
        help="fine-tune each seed's student with ce first, then run every method from it",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="ce vs fkl, seed 0, 100 steps; nothing written"
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON (see the default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    settings = replace(BenchSettings(), student_init=args.student_init)
    if args.transfer_prompts is not None:
        settings = replace(settings, transfer_prompts=args.transfer_prompts)
    default_methods = (*METHODS, "seqkd") if settings.transfer_prompts else METHODS
    methods, seeds = tuple(args.methods or default_methods), tuple(args.seeds)
    if args.quick:
        settings = replace(settings, steps=100)
        methods, seeds = ("ce", "fkl"), (0,)
    overrides = {
        "steps": args.steps,
        "student_records": args.student_records,
        "alpha_ce": args.alpha_ce,
        "lr": args.lr,
        "temperature": args.temperature,
        "warm_start_steps": args.warm_start_steps,
        "label_noise": args.label_noise,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    results = run_bench(settings, methods=methods, seeds=seeds)
    results["command"] = "python -m bench.kd_quality " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print()
    print(results["table"])
    print(f"\nwall time {results['wall_seconds']:.0f} s, {args.threads} torch threads")
    out = args.out
    if out is None and not args.quick:
        suffix = "" if settings.student_init == "random" else f"_{settings.student_init}"
        if settings.warm_start_steps:
            suffix += f"_warm{settings.warm_start_steps}"
        if settings.transfer_prompts:
            suffix += f"_transfer{settings.transfer_prompts}"
        if settings.label_noise:
            suffix += f"_noise{settings.label_noise:g}"
        out = RESULTS_DIR / f"kd_quality{suffix}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        _say(f"results written to {out}")


if __name__ == "__main__":
    main()
