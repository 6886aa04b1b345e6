"""Dry run: resolve a spec and report what would run, with every problem found, writing
nothing and queuing nothing (``POST /v1/jobs/validate``, or ``dry_run: true`` on create).

Unlike ``service.create``, which stops at the first error, this collects them all: every
pydantic error, then every reference (teachers, student, datasets) resolved on its own, then
the cross-checks of ``resolve_distill`` once the references hold. The estimates come from
``api/jobs/estimates.py``; the module docstring there says how each is computed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.config import Settings
from api.errors import InvalidInput
from api.jobs import estimates
from api.jobs.checkpoint_start import find_source
from api.jobs.resolution import resolve_dataset, resolve_distill, resolve_model
from api.jobs.service import parse_spec, without_dry_run
from api.jobs.spec import DistillSpec
from api.jobs.spec_method import CROSS_VOCAB_LOSSES
from ml.data.examples import encode_example
from ml.data.formatting import to_prompt_response
from ml.distillation.recipe_config import teacher_cache_fits
from ml.loading import load_tokenizer

TOKEN_SAMPLE_ROWS = 2000  # rows tokenized to estimate the token count; the rest extrapolated


def dry_run(*, session: Session, settings: Settings, project_id: str, body: Any) -> dict[str, Any]:
    body = without_dry_run(body)
    problems: list[dict[str, Any]] = []
    spec: DistillSpec | None = None
    try:
        spec = parse_spec(body)
    except InvalidInput as exc:
        _add(problems, exc)
    models: dict[str, dict[str, Any]] = {}
    datasets: dict[str, dict[str, Any]] = {}
    for role, kind, ref, loc in _references(body):
        try:
            if kind == "model":
                models[role] = resolve_model(session, settings, project_id, ref, loc)
            else:
                datasets[role] = resolve_dataset(session, settings, project_id, ref, loc)
        except InvalidInput as exc:
            _add(problems, exc)
    source_job = _checkpoint_source(body)
    if source_job is not None:  # checked on its own too, like the other references
        try:
            find_source(session, project_id, source_job)
        except InvalidInput as exc:
            _add(problems, exc)
    resolved: dict[str, Any] | None = None
    if spec is not None and not problems:
        try:
            resolved = resolve_distill(session, settings, project_id, spec)
        except InvalidInput as exc:
            _add(problems, exc)
    report: dict[str, Any] = {
        "valid": resolved is not None and not problems,
        "kind": body.get("kind") if isinstance(body, dict) else None,
        "problems": problems,
        "models": [_describe_model(role, m) for role, m in models.items()],
        "datasets": {role: _dataset_summary(d) for role, d in datasets.items()},
        "method": None,
        "vocabulary": _vocabulary(_loss_name(body), models),
        "plan": None,
        "memory": None,
        "time": None,
    }
    if spec is not None and resolved is not None:
        report |= _plan(spec, resolved, report["models"])
    return report


def _add(problems: list[dict[str, Any]], exc: InvalidInput) -> None:
    for error in exc.errors or [{"loc": ["body"], "msg": exc.detail}]:
        if error not in problems:
            problems.append(error)


def _references(body: Any) -> list[tuple[str, str, str, list[str | int]]]:
    """(role, "model" | "dataset", reference, loc) for each reference string in the raw body,
    read without the schema so that references are checked even when the schema fails."""
    if not isinstance(body, dict):
        return []
    refs: list[tuple[str, str, str, list[str | int]]] = []
    teacher = body.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("model"), str):
        refs.append(("teacher", "model", teacher["model"], ["body", "teacher", "model"]))
    teachers = body.get("teachers")
    if isinstance(teachers, list):
        for i, item in enumerate(teachers):
            if isinstance(item, dict) and isinstance(item.get("model"), str):
                refs.append((f"teachers[{i}]", "model", item["model"],
                             ["body", "teachers", i, "model"]))  # fmt: skip
    student = body.get("student")
    if isinstance(student, dict) and isinstance(student.get("model"), str):
        refs.append(("student", "model", student["model"], ["body", "student", "model"]))
    dataset = body.get("dataset")
    if isinstance(dataset, dict):
        for part in ("train", "eval"):
            if isinstance(dataset.get(part), str):
                refs.append((part, "dataset", dataset[part], ["body", "dataset", part]))
    return [r for r in refs if r[2]]


def _checkpoint_source(body: Any) -> str | None:
    student = body.get("student") if isinstance(body, dict) else None
    model = student.get("model") if isinstance(student, dict) else None
    source = model.get("from_checkpoint") if isinstance(model, dict) else None
    job = source.get("job") if isinstance(source, dict) else None
    return job if isinstance(job, str) and job else None


def _describe_model(role: str, resolved: dict[str, Any]) -> dict[str, Any]:
    return {"role": role, "id": resolved.get("id"), "path": resolved.get("path"),
            **estimates.describe_config(estimates.config_of(resolved["path"]))}  # fmt: skip


def _dataset_summary(resolved: dict[str, Any]) -> dict[str, Any]:
    return {k: resolved[k] for k in ("id", "rows", "format", "sha256")}


def _plan(
    spec: DistillSpec, resolved: dict[str, Any], models: list[dict[str, Any]]
) -> dict[str, Any]:
    teacher = resolved["teacher"]
    # A remote teacher (teacher.remote) has no local weights: it costs this host nothing.
    teacher_configs = [estimates.config_of(t["path"]) for t in resolved["teachers"] if "path" in t]
    teacher_sizes = [estimates.describe_config(c) for c in teacher_configs]
    student_ref = resolved["student"]
    lora = spec.student.lora.model_dump() if spec.student.lora is not None else None
    student_config = _student_config(student_ref, teacher_configs[0] if teacher_configs else None)
    student = estimates.describe_config(student_config, lora)
    if "path" not in student_ref:  # an init recipe: report the model it would build
        origin = {k: student_ref.get(k) for k in ("init", "from_checkpoint")}
        models.append({"role": "student", "id": None, "path": None, **origin, **student})
    loss = spec.method.loss
    own_tokenizer = "path" in student_ref and (
        loss in CROSS_VOCAB_LOSSES or loss == "ce" or "remote" in teacher
    )
    tokenizer_dir = student_ref["path"] if own_tokenizer else teacher["path"]
    if "from_checkpoint" in student_ref:
        tokenizer_dir = student_ref["from_checkpoint"]["tokenizer_path"]
    lengths, rows = _token_lengths(resolved["datasets"]["train"], tokenizer_dir, spec)
    held_out = 0 if spec.dataset.eval else max(1, int(rows * spec.dataset.eval_fraction))
    training = spec.training
    plan = estimates.plan_steps(
        train_rows=rows - held_out, batch_size=training.batch_size,
        grad_accum=training.grad_accum, epochs=training.epochs, max_steps=training.max_steps,
    )  # fmt: skip
    mean_len = sum(lengths) / len(lengths) if lengths else 0.0
    tokens_per_step = training.batch_size * training.grad_accum * mean_len
    plan |= {
        "held_out_rows": held_out,
        "tokens_per_epoch_approx": int(mean_len * (rows - held_out)),
        "mean_tokens_per_example": round(mean_len, 1),
        "total_tokens_approx": int(tokens_per_step * plan["total_steps"]),
        "tokens_counted_on_rows": len(lengths),
    }
    cached = spec.method.teacher_cache != "off" and teacher_cache_fits(
        loss, spec.method.data_mode, len(teacher_sizes), training.kd_chunk_tokens
    )
    # The recipe loads the teacher unless a cache replaces it (ce too: it evaluates it at the
    # end), but only KD runs its forward pass every step.
    resident_teachers = [] if cached else teacher_sizes
    forward_teachers = [] if cached or loss == "ce" else teacher_sizes
    seq_len = min(max(lengths, default=training.max_length), training.max_length)
    memory = estimates.estimate_memory(
        student=student, teachers=resident_teachers, micro_batch=training.batch_size,
        seq_len=seq_len, kd=loss != "ce", kd_chunk_tokens=training.kd_chunk_tokens,
        float32_activations=spec.resources.queue == "cpu", processes=spec.resources.nproc,
        sharded=spec.resources.strategy == "fsdp",
    )  # fmt: skip
    time = estimates.estimate_time(
        student_params=student["params"],
        teacher_params=sum(t["params"] for t in forward_teachers),
        tokens=plan["total_tokens_approx"],
        queue=spec.resources.queue,
    )
    method = {
        "loss": loss,
        "params": spec.method.params,
        "data_mode": spec.method.data_mode,
        "teachers": len(teacher_sizes),
        "teacher_cache": "used when it fits" if cached else "not used",
        "lora": lora is not None,
    }
    return {"method": method, "plan": plan, "memory": memory, "time": time}


def _student_config(student_ref: dict[str, Any], teacher_config: Any) -> Any:
    if "from_checkpoint" in student_ref:  # the source job's architecture, built from its teacher
        source_teacher = student_ref["from_checkpoint"]["teacher_path"]
        config = estimates.config_of(source_teacher) if source_teacher else None  # None: remote
        return _student_config(student_ref["base"], config)
    if "path" in student_ref:
        return estimates.config_of(student_ref["path"])
    init = student_ref["init"]
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    if "from_teacher_layers" in init:
        stride = int(init["from_teacher_layers"])
        config.num_hidden_layers = len(range(0, teacher_config.num_hidden_layers, stride))
        return config
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=teacher_config.vocab_size, **init["config"])


def _loss_name(body: Any) -> str:
    method = body.get("method") if isinstance(body, dict) else None
    loss = method.get("loss", "fkl") if isinstance(method, dict) else "fkl"
    return loss if isinstance(loss, str) else "fkl"


def _vocabulary(loss: str, models: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """same / cross_vocab (a cross-vocabulary loss bridges the tokenizers) / error."""
    teacher = models.get("teacher") or models.get("teachers[0]")
    student = models.get("student")
    if teacher is None:
        return None
    if student is None:
        return {"status": "same", "detail": "the student is built with the teacher's vocabulary"}
    if student["vocab_size"] == teacher["vocab_size"] and (
        student["tokenizer_sha256"] == teacher["tokenizer_sha256"]
    ):
        return {"status": "same", "detail": "student and teacher share one tokenizer"}
    sizes = f"teacher vocab {teacher['vocab_size']}, student {student['vocab_size']}"
    if loss in CROSS_VOCAB_LOSSES:
        return {"status": "cross_vocab", "detail": f"tokenizers differ ({sizes}); '{loss}' "
                "aligns them"}  # fmt: skip
    if loss == "ce":
        return {"status": "not_needed", "detail": f"tokenizers differ ({sizes}); 'ce' reads only "
                "the dataset with the student's own tokenizer"}  # fmt: skip
    return {"status": "error", "detail": f"tokenizers differ ({sizes}) and '{loss}' needs one "
            f"vocabulary: use {', '.join(CROSS_VOCAB_LOSSES)}"}  # fmt: skip


def _token_lengths(
    dataset: dict[str, Any], tokenizer_dir: str, spec: DistillSpec
) -> tuple[list[int], int]:
    """Encoded lengths (as the recipe encodes, truncated at max_length) of up to
    ``TOKEN_SAMPLE_ROWS`` rows, and the dataset's row count."""
    tokenizer = load_tokenizer(tokenizer_dir)
    lengths: list[int] = []
    with Path(dataset["path"]).open(encoding="utf-8") as fh:
        for line in fh:
            if len(lengths) == TOKEN_SAMPLE_ROWS:
                break
            if line.strip():
                prompt, response = to_prompt_response(json.loads(line))
                example = encode_example(tokenizer, prompt, response, spec.training.max_length)
                lengths.append(len(example["input_ids"]))
    return lengths, int(dataset["rows"])
