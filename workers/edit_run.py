"""Running a claimed ``kind: edit`` job: load the model twice (one copy stays the original),
apply the requests with the spec's method and mode, measure before and after, save the edited
model as a new registered model with its lineage, and keep the weight delta so the edit can be
undone. The original model's files are never written."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from api.config import Settings
from api.registry.service import register_job_output
from api.storage import open_store
from ml.distillation.recipe_config import MetricPoint
from ml.editing.apply import apply_edits, weight_delta
from ml.editing.covariance import KeyCovarianceStore
from ml.editing.disco import disco_next_token_logits
from ml.editing.grace import detach_grace, find_grace, save_codebook
from ml.editing.metrics import evaluate_edits
from ml.editing.requests import EditRequest, parse_edit_requests
from ml.editing.sequential import perplexity, run_sequential_edits
from ml.loading import GRACE_CODEBOOK, load_causal_lm, load_tokenizer, save_model
from models import Job, new_id
from models.session import session_scope
from workers.runtime import JobRecorder, LeaseKeeper, LeaseLost, job_dir


def read_jsonl(path: str | Path) -> list[Any]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_texts(dataset: dict[str, Any], limit: int | None = None) -> list[str]:
    texts = [record["text"] for record in read_jsonl(dataset["path"])]
    return texts[:limit] if limit is not None else texts


def run_edit(
    settings: Settings, job: Job, device: str, recorder: JobRecorder, keeper: LeaseKeeper
) -> None:
    spec, resolved = job.spec, job.resolved
    model_dir = Path(resolved["model"]["path"])
    tokenizer = load_tokenizer(model_dir)
    original = load_causal_lm(model_dir, device=device)
    model = copy.deepcopy(original)
    requests = parse_edit_requests(read_jsonl(resolved["requests"]["path"]))
    stats = _key_stats(settings, spec, resolved)
    metrics = list(spec["evaluate"])
    heldout = read_texts(resolved["heldout"]) if "heldout" in resolved else []
    recorder.set_fields(total_steps=len(requests))
    recorder.event("info", f"editing {len(requests)} facts with {spec['method']['name']} "
                   f"({spec['mode']})", {"requests": len(requests)})  # fmt: skip
    before = flatten(evaluate_edits(original, original, tokenizer, requests, metrics=metrics))
    result: dict[str, Any] = {"before": before, "method": spec["method"]["name"],
                              "mode": spec["mode"]}  # fmt: skip
    if spec["mode"] == "sequential":
        model = _sequential(spec, model, original, tokenizer, requests, stats, heldout,
                            recorder, result)  # fmt: skip
    else:
        outcome = apply_edits(model, tokenizer, requests, method=spec["method"]["name"],
                              hparams=spec["method"]["params"], mode=spec["mode"],
                              stats=stats)  # fmt: skip
        result["steps"] = outcome.steps
        after = flatten(evaluate_edits(model, original, tokenizer, requests, metrics=metrics))
        if heldout:
            after["heldout/perplexity_ratio"] = perplexity(model, tokenizer, heldout) / perplexity(
                original, tokenizer, heldout
            )
        if spec.get("portability_disco") and "portability" in metrics:
            after.update(_disco_portability(model, original, tokenizer, requests,
                                            spec["portability_disco"]))  # fmt: skip
        result["after"] = after
        recorder.metrics(_points(len(requests), after))
    if keeper.should_stop():
        _stopped(keeper, recorder)
        return
    _save_and_register(settings, job, model, original, tokenizer, requests, recorder, result)


def _disco_portability(
    model: Any, original: Any, tokenizer: Any, requests: list[EditRequest], options: dict[str, Any]
) -> dict[str, float]:
    """Portability decoded with DISCO (Sun et al. 2025), reported beside plain greedy."""
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    scorer = disco_next_token_logits(model, original, pad, alpha=options["alpha"],
                                     beta=options["beta"])  # fmt: skip
    scores = evaluate_edits(model, original, tokenizer, requests, metrics=["portability"],
                            portability_logits=scorer)["portability"]  # fmt: skip
    value = float(scores["generation"])
    return {} if math.isnan(value) else {"portability_disco/generation": value}


def _key_stats(
    settings: Settings, spec: dict[str, Any], resolved: dict[str, Any]
) -> KeyCovarianceStore | None:
    if "stats_corpus" not in resolved:
        return None
    corpus = read_texts(resolved["stats_corpus"], spec["stats"]["max_texts"])
    return KeyCovarianceStore(settings.resolved_artifact_root / "key_stats", corpus,
                              model_key=resolved["model"]["weights_sha256"])  # fmt: skip


def flatten(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metric dicts as ``{"reliability/teacher_forced": ..}``; counts and NaN dropped."""
    flat: dict[str, float] = {}
    for key, value in scores.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif key not in ("n", "edits") and isinstance(value, int | float):
            if not math.isnan(value):
                flat[f"{prefix}{key}"] = float(value)
    return flat


def _sequential(
    spec: dict[str, Any],
    model: Any,
    original: Any,
    tokenizer: Any,
    requests: list[EditRequest],
    stats: KeyCovarianceStore | None,
    heldout: list[str],
    recorder: JobRecorder,
    result: dict[str, Any],
) -> Any:
    sequential = spec["sequential"]
    collapse = sequential["collapse"]
    max_ppl = None
    if heldout and collapse["max_perplexity_ratio"] is not None:
        max_ppl = collapse["max_perplexity_ratio"] * perplexity(original, tokenizer, heldout)

    def on_point(point: dict[str, Any]) -> None:
        recorder.metrics(_points(point["edits"], flatten(point)))
        recorder.set_fields(progress_step=point["edits"])

    outcome = run_sequential_edits(
        model, original, tokenizer, requests,
        method=spec["method"]["name"], hparams=spec["method"]["params"], stats=stats,
        every=sequential["eval_every"], min_locality=collapse["min_locality"],
        heldout_texts=heldout, max_perplexity=max_ppl, on_point=on_point,
    )  # fmt: skip
    result["curve"] = [{"edits": p["edits"], **flatten(p)} for p in outcome.curve]
    result["kept_edits"] = outcome.applied
    if outcome.stopped is not None:
        recorder.event("warn", f"model collapsed: {outcome.stopped}; keeping the state after "
                       f"edit {outcome.applied}", {"kept": outcome.applied})  # fmt: skip
        result["collapse_reason"] = outcome.stopped
    kept = requests[: outcome.applied]
    result["after"] = (
        flatten(evaluate_edits(model, original, tokenizer, kept, metrics=list(spec["evaluate"])))
        if kept
        else {}
    )
    return model


def _stopped(keeper: LeaseKeeper, recorder: JobRecorder) -> None:
    """Cancelled (checked after the edits: they are quick and not resumable midway)."""
    if keeper.lost.is_set():
        raise LeaseLost(recorder.job_id)
    recorder.event("info", "cancelled; nothing was registered", {})
    recorder.finish("cancelled")


def _points(step: int, values: dict[str, float]) -> list[MetricPoint]:
    return [MetricPoint(key=f"edit/{key}", step=step, value=value)
            for key, value in values.items() if key != "edits"]  # fmt: skip


def _save_and_register(
    settings: Settings,
    job: Job,
    model: Any,
    original: Any,
    tokenizer: Any,
    requests: list[EditRequest],
    recorder: JobRecorder,
    result: dict[str, Any],
) -> None:
    model_id = new_id("mdl")
    out_dir = settings.resolved_artifact_root / "models" / model_id
    codebook = find_grace(model)
    if codebook is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_codebook(codebook, out_dir / GRACE_CODEBOOK)
        detach_grace(model)  # the weights are saved plain; the codebook file re-attaches it
    delta = weight_delta(dict(original.named_parameters()), model)
    save_model(model, tokenizer, out_dir)
    delta_path = job_dir(settings, job.id) / "weight_delta.safetensors"
    delta_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous().cpu() for name, t in delta.items()}, str(delta_path))
    open_store(settings).upload_dir(out_dir)  # shared storage: before the row names it
    result["weight_delta"] = {"path": str(delta_path), "parameters": sorted(delta)}
    lineage = {
        "job_id": job.id,
        "kind": "edit",
        "method": job.spec["method"]["name"],
        "mode": job.spec["mode"],
        "base_model": {k: job.resolved["model"].get(k) for k in ("id", "path", "weights_sha256")},
        "datasets": {"requests": job.resolved["requests"]["sha256"]},
        "edits": len(requests) if "kept_edits" not in result else result["kept_edits"],
        "weight_delta": str(delta_path),
        "grace_codebook": codebook is not None,
    }
    with session_scope(settings.resolved_database_url) as session:
        row = register_job_output(session=session, project_id=job.project_id,
                                  name=job.name or f"{job.id}-edited", path=out_dir,
                                  job_id=job.id, model_id=model_id, lineage=lineage)  # fmt: skip
        model_ref = row.id
    recorder.event("info", "edited model saved and registered", {"model_id": model_ref})
    recorder.finish("succeeded", result=result, output_model_id=model_ref,
                    progress_step=lineage["edits"])  # fmt: skip
