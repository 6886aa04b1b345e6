"""TRL's cross-tokenizer trainer GOLD (``trl.experimental.gold``, ULD loss) on the models and data
of ``bench/crossvocab_quality.py``, scored by our evaluator, so that its numbers sit beside our
``ce`` / ``uld`` / ``dskd`` rows (GKD's protocol: each seed's warm tokenizer-B student, trained on
the first ``student_records`` records with ``label_noise``, taught by the tokenizer-A teacher).

    .venv-bench/bin/python -m bench.gold_compare [--seeds 0 1 2] [--label-noise 0.2]
        [--lmbda 0.0 0.5] [--steps 200] [--lr 3e-4]
    .venv-bench/bin/python -m bench.gold_compare --distill-weight 0 --append  # GOLD, CE only
    .venv-bench/bin/python -m bench.gold_compare --merge bayesian --append
        # --append adds rows to the results JSON; our runs, when crossvocab_quality's JSON has
        # these settings, join the table (Δ vs our ce)

GOLD settings (``GOLDConfig``), chosen to equal our recipe wherever GOLD has the knob:
``use_uld_loss`` with GOLD's default extended (byte-aligned) ULD and ``observed`` merge,
``uld_crossentropy_weight = alpha_ce = 0.5`` and ``uld_distillation_weight = 1 - alpha_ce = 0.5``
(our total is ``(1 - alpha_ce) KD + alpha_ce CE``; ``--distill-weight`` changes it), ULD
temperatures 1, sampling temperature 1 and GOLD's ``top_p`` 0.95 for the ``lmbda`` share of
on-policy batches (0: offline on the dataset responses, as our methods), ``max_steps`` =
``steps``, batch 16, AdamW at ``lr`` with 20 warmup steps and cosine decay, grad-norm clip 1,
no weight decay, seed = seed, ``max_length`` 64, ``max_completion_length`` 12, fp32 on CPU
(SFTConfig's defaults bf16 and activation checkpointing turned off).

Data: a non-conversational ``prompt``/``completion`` dataset of the templated pairs. GOLD encodes
``prompt + completion`` with ``add_special_tokens=False`` and appends the student's EOS itself
(the student learns to stop, as with our ``encode_example``); the teacher side uses
``tokenizer(prompt, add_special_tokens=True)``, and our tokenizers add no specials there. So
that both models see the sequences our recipe trains and evaluates on (``[bos] + prompt +
response + [eos]``), the prompt text starts with the literal ``<bos>``, a special token of both
tokenizers (``--no-bos`` leaves it out). No chat template, hub access or TRL patch is needed.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench.crossvocab_quality import (  # noqa: E402
    STUDENT_VOCAB,
    ensure_student_base,
    ensure_warm_student,
)
from bench.kd_quality import (  # noqa: E402
    METRICS,
    RESULTS_DIR,
    BenchData,
    BenchSettings,
    ensure_teacher,
    load_data,
    markdown_table,
    summarise,
)
from ml.evaluation.generation import evaluate_model  # noqa: E402
from ml.loading import load_causal_lm, load_tokenizer  # noqa: E402


def gold_dataset(data: BenchData, settings: BenchSettings, bos: str | None) -> Any:
    from datasets import Dataset

    pairs = data.train[: settings.student_records]
    return Dataset.from_dict(
        {"prompt": [(bos or "") + p for p, _ in pairs], "completion": [r for _, r in pairs]}
    )


def run_gold(settings: BenchSettings, data: BenchData, teacher: Path, student: Path, seed: int,
             lmbda: float, distill_weight: float, bos: bool,
             merge: str) -> dict[str, Any]:  # fmt: skip
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    tokenizer = load_tokenizer(student)
    model = load_causal_lm(student, dtype=torch.float32)
    model.train()
    with tempfile.TemporaryDirectory(prefix="gold-") as out_dir:
        config = GOLDConfig(
            output_dir=out_dir, report_to="none", use_cpu=True, bf16=False, fp16=False,
            seed=seed, data_seed=seed, max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=1,
            learning_rate=settings.lr, lr_scheduler_type=settings.schedule,
            warmup_steps=settings.warmup_steps, weight_decay=0.0, max_grad_norm=1.0,
            activation_checkpointing=False, eval_strategy="no", save_strategy="no",
            logging_steps=25, disable_tqdm=True, dataloader_num_workers=0,
            max_length=settings.max_length, max_completion_length=settings.max_new_tokens,
            lmbda=lmbda, temperature=settings.temperature,
            teacher_tokenizer_name_or_path=str(teacher), use_uld_loss=True,
            uld_crossentropy_weight=settings.alpha_ce, uld_distillation_weight=distill_weight,
            uld_student_temperature=settings.temperature,
            uld_teacher_temperature=settings.temperature, uld_token_merge_strategy=merge,
        )  # fmt: skip
        trainer = GOLDTrainer(
            model=model,
            teacher_model=load_causal_lm(teacher, dtype=torch.float32),
            args=config,
            train_dataset=gold_dataset(data, settings, tokenizer.bos_token if bos else None),
            processing_class=tokenizer,
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        history = [h for h in trainer.state.log_history if "loss" in h]
    model.eval()
    held = evaluate_model(model, tokenizer, data.held_out, max_length=settings.max_length,
                          max_new_tokens=settings.max_new_tokens, batch_size=64)  # fmt: skip
    name = "gold_uld" + (f"_lmbda{lmbda:g}" if lmbda else "") + ("" if bos else "_nobos")
    name += "" if merge == "observed" else f"_{merge}"
    name += "" if distill_weight == 1 - settings.alpha_ce else f"_w{distill_weight:g}"
    gold = {"lmbda": lmbda, "uld_token_merge_strategy": merge, "bos_in_text": bos,
            "uld_crossentropy_weight": settings.alpha_ce,
            "uld_distillation_weight": distill_weight}  # fmt: skip
    return {"method": name, "seed": seed, "steps": result.global_step, "gold": gold,
            "held_out": {k: held[k] for k in METRICS}, "seconds": seconds,
            "train_loss": [[h["step"], h["loss"]] for h in history]}  # fmt: skip


def wait_for(path: Path, minutes: float) -> bool:
    """Wait for another process's ``ensure_warm_student`` output to be complete: its config,
    weights and tokenizer (``save_pretrained`` writes the config first)."""
    deadline = time.monotonic() + 60 * minutes
    needed = ("config.json", "model.safetensors", "tokenizer.json")
    while time.monotonic() < deadline:
        if all((path / name).exists() for name in needed):
            time.sleep(5)  # let the last write finish
            return True
        time.sleep(20)
    return False


def ours(path: Path, settings: BenchSettings, seeds: list[int]) -> list[dict[str, Any]]:
    """Our runs from crossvocab_quality's results JSON, when it used these settings."""
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    keys = ("steps", "lr", "warm_start_steps", "alpha_ce", "label_noise", "student_records")
    if any(doc["settings"].get(k) != getattr(settings, k) for k in keys):
        print(f"==> {path} has other settings: not merged", flush=True)
        return []
    return [r for r in doc["runs"] if r["seed"] in seeds]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--label-noise", type=float, default=0.2)
    parser.add_argument("--lmbda", type=float, nargs="+", default=[0.0],
                        help="GOLD's on-policy share; one run per value and seed")  # fmt: skip
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--distill-weight", type=float, default=None,
                        help="uld_distillation_weight (default 1 - alpha_ce = 0.5)")  # fmt: skip
    parser.add_argument("--merge", choices=("observed", "bayesian"), default="observed",
                        help="uld_token_merge_strategy (GOLD's default: observed)")  # fmt: skip
    parser.add_argument("--no-bos", action="store_true", help="GOLD's texts without '<bos>'")
    parser.add_argument("--wait-minutes", type=float, default=30.0,
                        help="wait this long for another process's warm student")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", action="store_true",
                        help="keep --out's other runs (bare --seeds: re-table)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    import datasets
    import trl
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    settings = replace(BenchSettings(), warm_start_steps=400, steps=args.steps, lr=args.lr,
                       alpha_ce=0.5, label_noise=args.label_noise)  # fmt: skip
    distill_weight = 1.0 - settings.alpha_ce if args.distill_weight is None else args.distill_weight
    started = time.perf_counter()
    data = load_data(settings)
    teacher_dir, teacher_stats = ensure_teacher(settings, data)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        student = ensure_student_base(settings, data, seed)
        warm = student.parent / (
            f"{student.name}-warm{settings.warm_start_steps}-lr{settings.warm_start_lr:g}"
            f"-n{settings.student_records}"
        )  # the path ensure_warm_student builds: use another process's build when it comes
        if not wait_for(warm, args.wait_minutes):
            warm = ensure_warm_student(settings, data, teacher_dir, student, seed)
        for lmbda in args.lmbda:
            run = run_gold(settings, data, teacher_dir, warm, seed, lmbda, distill_weight,
                           bos=not args.no_bos, merge=args.merge)  # fmt: skip
            runs.append(run)
            held = run["held_out"]
            print(f"==> {run['method']} seed {seed}: EM {held['exact_match']:.3f} ROUGE-L "
                  f"{held['rouge_l']:.3f} loss {held['loss']:.3f} ({run['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
    noise = f"_noise{args.label_noise:g}" if args.label_noise else ""
    out = args.out or RESULTS_DIR / f"gold_compare{noise}.json"
    old = json.loads(out.read_text()) if args.append and out.exists() else {}
    names = {r["method"] for r in runs}
    runs = [r for r in old.get("runs", []) if r["method"] not in names] + runs
    ours_path = RESULTS_DIR / f"crossvocab_quality_warm{settings.warm_start_steps}{noise}.json"
    baseline = ours(ours_path, settings, sorted({r["seed"] for r in runs}))
    summary = summarise(baseline + runs)
    table = markdown_table(summary, teacher_stats)
    print("\n" + table)
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.0f} s")
    command = "python -m bench.gold_compare " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = {"commands": old.get("commands", []) + [command],
           "settings": asdict(settings), "student_vocab": STUDENT_VOCAB,
           "gold": {"trl_version": trl.__version__, "use_uld_loss": True, "use_extended_uld": True,
                    "max_completion_length": settings.max_new_tokens},
           "ours_merged_from": str(ours_path) if baseline else None,
           "runs": runs, "summary": summary, "table": table,
           "wall_seconds": old.get("wall_seconds", []) + [wall]}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"==> results written to {out}")


if __name__ == "__main__":
    main()
