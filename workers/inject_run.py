"""Running a claimed ``kind: inject`` job: teach the model the documents with the spec's method
(prompt distillation, or a fine-tuning baseline) through a LoRA adapter, score the held-out
questions closed book before and after, and register the result as a new model with its
lineage. The base model's files are never written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.config import Settings
from api.registry.service import register_job_output
from api.storage import open_store
from ml.data.formatting import to_prompt_response
from ml.distillation.lora import save_lora_student
from ml.distillation.recipe_config import MetricPoint
from ml.injection.evaluation import score_pairs
from ml.injection.qa import QAPair
from ml.injection.run import run_injection
from ml.loading import load_causal_lm, load_tokenizer
from models import Job, new_id
from models.session import session_scope
from workers.edit_run import read_jsonl, read_texts
from workers.runtime import JobRecorder, LeaseKeeper, LeaseLost

FLUSH_EVERY = 10  # training steps per metrics write


def _pairs(dataset: dict[str, Any]) -> list[tuple[str, str]]:
    return [to_prompt_response(record) for record in read_jsonl(dataset["path"])]


def run_inject(
    settings: Settings, job: Job, device: str, recorder: JobRecorder, keeper: LeaseKeeper
) -> None:
    spec, resolved = job.spec, job.resolved
    model_dir = Path(resolved["model"]["path"])
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, device=device)
    documents = read_texts(resolved["documents"])
    qa = [QAPair(q, a) for q, a in _pairs(resolved["qa"])] if "qa" in resolved else None
    held_out = _pairs(resolved["eval"]) if "eval" in resolved else []
    method = spec["method"]["name"]
    steps = int(spec["method"]["params"].get("steps", 200))
    recorder.set_fields(total_steps=steps)
    result: dict[str, Any] = {"method": method}
    if held_out:
        result["before"] = score_pairs(model, tokenizer, held_out)
    pending: list[MetricPoint] = []

    def on_metrics(step: int, values: dict[str, float]) -> None:
        pending.extend(MetricPoint(f"train/{k}", step, v) for k, v in values.items())
        if step % FLUSH_EVERY == 0 or step == steps:
            recorder.metrics(list(pending))
            pending.clear()

    lora = spec.get("lora")
    outcome = run_injection(
        model, tokenizer, method=method, documents=documents, qa_pairs=qa,
        params=spec["method"]["params"],
        lora={k: v for k, v in lora.items() if k != "merge"} if lora else None,
        on_metrics=on_metrics, should_stop=keeper.should_stop,
    )  # fmt: skip
    recorder.metrics(list(pending))
    if outcome.stopped:
        if keeper.lost.is_set():
            raise LeaseLost(job.id)
        recorder.event("info", "cancelled; nothing was registered", {})
        recorder.finish("cancelled")
        return
    result["qa_pairs"] = len(outcome.qa_pairs)
    if held_out:
        result["after"] = score_pairs(outcome.model, tokenizer, held_out)
        step = len(outcome.history)
        recorder.metrics([MetricPoint(f"eval/{k}", step, float(v))
                          for k, v in result["after"].items() if k != "n"])  # fmt: skip
    model_id = new_id("mdl")
    out_dir = settings.resolved_artifact_root / "models" / model_id
    merge = bool((lora or {}).get("merge", True))
    save_lora_student(outcome.model, tokenizer, out_dir, merge=merge)
    open_store(settings).upload_dir(out_dir)  # shared storage: before the row names it
    lineage = {
        "job_id": job.id,
        "kind": "inject",
        "method": method,
        "base_model": {k: resolved["model"].get(k) for k in ("id", "path", "weights_sha256")},
        "datasets": {
            name: resolved[name]["sha256"]
            for name in ("documents", "qa", "eval")
            if name in resolved
        },  # fmt: skip
        "lora": lora,
    }
    with session_scope(settings.resolved_database_url) as session:
        row = register_job_output(session=session, project_id=job.project_id,
                                  name=job.name or f"{job.id}-injected", path=out_dir,
                                  job_id=job.id, model_id=model_id, lineage=lineage)  # fmt: skip
        model_ref = row.id
    recorder.event("info", "model saved and registered", {"model_id": model_ref})
    recorder.finish("succeeded", result=result, output_model_id=model_ref,
                    progress_step=len(outcome.history))  # fmt: skip
