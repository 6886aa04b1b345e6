"""Knowledge-editing quality on the project's facts model: ROME, MEMIT, FT and GRACE.

Builds (or reuses) the LLaMA-style facts model (``ml/data/facts_model.py``), then measures, all
four metrics both ways (teacher forced / greedy exact match; locality against the original):

* ``single``: each of ``--edits`` requests applied alone and undone (``restore``), averaged;
* ``batch``: ``--batch`` requests at once (one update for ``ft``/``memit``);
* ``sequential``: ``ft``, ``memit``, ``grace`` applied one request at a time up to
  ``--sequential`` edits; every ``--every`` edits the metrics on the newest block plus retention
  (reliability of all earlier edits);
* DISCO against plain greedy decoding on the two-hop portability questions of the batch edits.

    python -m bench.editing_quality [--edits 20] [--batch 20] [--sequential 100] [--every 20]
    python -m bench.editing_quality --published-search --methods rome memit --sequential 0 \
        --out bench/results/editing_quality_published_search.json
    python -m bench.editing_quality --arch gpt2 --methods rome memit --sequential 0 \
        --out bench/results/editing_quality_gpt2.json

Writes ``bench/results/editing_quality.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from ml.data.facts_model import build_facts_model
from ml.data.facts_world import build_world, edit_requests, training_sentences
from ml.editing.apply import apply_edits, restore
from ml.editing.covariance import KeyCovarianceStore
from ml.editing.disco import disco_next_token_logits
from ml.editing.metrics import METRICS, evaluate_edits
from ml.editing.requests import EditRequest, parse_edit_requests
from ml.editing.sequential import run_sequential_edits
from ml.loading import load_causal_lm, load_tokenizer, weights_sha256

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "bench" / ".cache" / "editing"
RESULTS = ROOT / "bench" / "results" / "editing_quality.json"
# label -> (method, params), chosen on the 4-layer facts model (docs/BENCHMARKS.md "Knowledge
# editing"): layer 0's MLP is where a single-layer edit took; MEMIT is run over layers 0-1 with
# λ 1000 (λ 10 kept far less locality in a batch).
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "rome": ("rome", {"layer": 0}),
    "memit": ("memit", {"layers": [0, 1], "mom2_weight": 1000.0}),
    "ft": ("ft", {"layers": [0], "steps": 30, "lr": 5e-3, "max_change": 5e-3}),
    "grace": ("grace", {"layer": 2, "init_radius": 1.0}),
}
METHODS = tuple(CONFIGS)
SEQUENTIAL_METHODS = ("ft", "memit", "grace")
DISCO = {"alpha": 1.0, "beta": 0.1}


def _accumulate(total: dict[str, dict[str, float]], scores: dict[str, dict[str, Any]]) -> None:
    for metric, values in scores.items():
        slot = total.setdefault(metric, {"teacher_forced": 0.0, "generation": 0.0, "n": 0})
        n = values["n"]
        slot["teacher_forced"] += values["teacher_forced"] * n
        slot["generation"] += values["generation"] * n
        slot["n"] += n


def _means(total: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        metric: {
            "teacher_forced": v["teacher_forced"] / max(v["n"], 1),
            "generation": v["generation"] / max(v["n"], 1),
            "n": v["n"],
        }
        for metric, v in total.items()
    }


def run_single(
    model: Any,
    original: Any,
    tokenizer: Any,
    requests: list[EditRequest],
    method: str,
    store: KeyCovarianceStore,
) -> dict[str, Any]:
    total: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for request in requests:
        outcome = apply_edits(
            model,
            tokenizer,
            [request],
            method=CONFIGS[method][0],
            hparams=CONFIGS[method][1],
            mode="single",
            stats=store,
        )
        _accumulate(total, evaluate_edits(model, original, tokenizer, [request]))
        restore(model, outcome.weight_delta)
    return {
        "metrics": _means(total),
        "edits": len(requests),
        "seconds": time.perf_counter() - started,
    }


def run_batch(
    model: Any,
    original: Any,
    tokenizer: Any,
    requests: list[EditRequest],
    method: str,
    store: KeyCovarianceStore,
) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = apply_edits(
        model,
        tokenizer,
        requests,
        method=CONFIGS[method][0],
        hparams=CONFIGS[method][1],
        mode="batch",
        stats=store,
    )
    seconds = time.perf_counter() - started
    scores = evaluate_edits(model, original, tokenizer, requests)
    pad = int(tokenizer.pad_token_id)
    disco = disco_next_token_logits(model, original, pad, **DISCO)
    with_disco = evaluate_edits(
        model, original, tokenizer, requests, metrics=["portability"], portability_logits=disco
    )
    restore(model, outcome.weight_delta)
    return {
        "metrics": scores,
        "edits": len(requests),
        "seconds": seconds,
        "portability_disco": with_disco["portability"],
    }


def run_sequential(
    model: Any,
    original: Any,
    tokenizer: Any,
    requests: list[EditRequest],
    method: str,
    store: KeyCovarianceStore,
    every: int,
) -> list[dict[str, Any]]:
    started = time.perf_counter()

    def show(point: dict[str, Any]) -> None:
        point["seconds"] = time.perf_counter() - started
        newest, retention = point["newest"], point.get("retention", {})
        print(
            f"  {method} {point['edits']}: rel {newest['reliability']['teacher_forced']:.2f} "
            f"loc {newest['locality']['teacher_forced']:.2f} "
            f"ret {retention.get('teacher_forced', float('nan')):.2f}",
            flush=True,
        )

    result = run_sequential_edits(model, original, tokenizer, requests, method=CONFIGS[method][0],
                                  hparams=CONFIGS[method][1], stats=store, every=every,
                                  on_point=show)  # fmt: skip
    for delta in reversed(result.deltas):
        restore(model, delta)
    restore(model, {})  # detaches a GRACE codebook
    return result.curve


def _fmt(values: dict[str, Any]) -> str:
    return f"{values['teacher_forced']:.2f} / {values['generation']:.2f}"


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for mode in ("single", "batch"):
        lines += [
            f"\n{mode} (teacher forced / generation exact match)\n",
            "| method | " + " | ".join(METRICS) + " | seconds |",
            "|---" * (len(METRICS) + 2) + "|",
        ]
        for method, entry in results[mode].items():
            cells = [_fmt(entry["metrics"][m]) for m in METRICS]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {entry['seconds']:.0f} |")
    lines += [
        "\nportability after the batch edits, generation exact match: greedy vs DISCO\n",
        "| method | greedy | DISCO |",
        "|---|---|---|",
    ]
    for method, entry in results["batch"].items():
        lines.append(
            f"| {method} | {entry['metrics']['portability']['generation']:.2f} | "
            f"{entry['portability_disco']['generation']:.2f} |"
        )
    lines += [
        "\nsequential (teacher forced / generation): newest block, retention of earlier\n",
        "| method | edits | reliability | generalization | locality | retention |",
        "|---|---|---|---|---|---|",
    ]
    for method, curve in results["sequential"].items():
        for point in curve:
            new = point["newest"]
            retention = _fmt(point["retention"]) if "retention" in point else "—"
            lines.append(
                f"| {method} | {point['edits']} | {_fmt(new['reliability'])} | "
                f"{_fmt(new['generalization'])} | {_fmt(new['locality'])} | {retention} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--arch", default="llama", choices=("llama", "gpt2"),
        help="gpt2: the smaller GPT-2-style facts model (hidden 96, 600 steps)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--published-search", action="store_true",
        help="ROME/MEMIT value search as published (δ at the subject's last token only)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.published_search:
        for label in ("rome", "memit"):
            method, params = CONFIGS[label]
            CONFIGS[label] = (method, {**params, "values": {"through_update": False}})
    torch.set_num_threads(args.threads)
    model_dir = CACHE_DIR / f"facts-{args.arch}"
    if args.arch == "gpt2":
        manifest = build_facts_model(model_dir, arch="gpt2", hidden_size=96, steps=600)
    else:
        manifest = build_facts_model(model_dir)
    original = load_causal_lm(model_dir)
    tokenizer = load_tokenizer(model_dir)
    model = copy.deepcopy(original)
    world = build_world(0)
    total = max(args.edits, args.batch, args.sequential)
    requests = parse_edit_requests(edit_requests(world, total, seed=1))
    store = KeyCovarianceStore(
        CACHE_DIR / "stats", training_sentences(world), model_key=weights_sha256(model_dir)
    )
    results: dict[str, Any] = {
        "model": manifest,
        "configs": CONFIGS,
        "disco": DISCO,
        "single": {},
        "batch": {},
        "sequential": {},
    }
    for method in args.methods:
        print(f"{method}: single", flush=True)
        results["single"][method] = run_single(
            model, original, tokenizer, requests[: args.edits], method, store
        )
        print(f"{method}: batch", flush=True)
        results["batch"][method] = run_batch(
            model, original, tokenizer, requests[: args.batch], method, store
        )
    for method in args.methods:
        if method in SEQUENTIAL_METHODS and args.sequential > 0:
            print(f"{method}: sequential", flush=True)
            results["sequential"][method] = run_sequential(
                model, original, tokenizer, requests[: args.sequential], method, store, args.every
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
