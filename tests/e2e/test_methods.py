"""Distillation methods through the REST API on the embedded stack: a teacher cache built once
and reused, seqkd generations stored and reused, on-policy KD into a LoRA student, and
routed teachers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from models import TeacherArtifact
from models.session import session_scope
from tests.e2e.conftest import TERMINAL, distill_spec


def _run(api, spec) -> tuple[dict, list[str]]:
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    job = api.wait_status(job_id, TERMINAL, timeout=300)
    messages = [e["message"] for e in api.events(job_id)]
    assert job["status"] == "succeeded", (job["error"], messages)
    return job, messages


def _artifacts(home: Path, kind: str) -> int:
    with session_scope(f"sqlite:///{home / 'distill.db'}") as session:
        stmt = select(func.count()).select_from(TeacherArtifact)
        return int(session.scalar(stmt.where(TeacherArtifact.kind == kind)) or 0)


def test_teacher_cache_is_built_once_then_reused(tmp_path, embedded_stack, tiny_teacher,
                                                jsonl_file):  # fmt: skip
    _, api = embedded_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=4, checkpoint_every=0)
    spec["method"]["teacher_cache"] = {"mode": "topk", "k": 32}
    _, first = _run(api, spec)
    assert "teacher cache built" in first and "KD targets from the teacher cache" in first
    spec["training"]["lr"] = 5e-4  # another job, same teacher and examples
    _, second = _run(api, spec)
    assert "teacher cache hit" in second and "KD targets from the teacher cache" in second
    assert not any(m.startswith("teacher cache miss") for m in second)
    spec["method"]["teacher_cache"] = "auto"  # auto finds it too
    _, third = _run(api, spec)
    assert "teacher cache hit" in third
    assert _artifacts(tmp_path / "home", "logits") == 1


def test_seqkd_generations_are_stored_and_reused(tmp_path, embedded_stack, tiny_teacher,
                                                 jsonl_file):  # fmt: skip
    _, api = embedded_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=3, checkpoint_every=0)
    spec["method"] = {"loss": "ce", "data_mode": "seqkd", "teacher_cache": "off",
                      "generation": {"max_new_tokens": 8, "temperature": 0}}  # fmt: skip
    _, first = _run(api, spec)
    assert "seqkd generations stored" in first
    _, second = _run(api, spec)
    assert "seqkd generations reused" in second
    assert _artifacts(tmp_path / "home", "seqkd") == 1


def test_onpolicy_jsd_into_a_lora_student(embedded_stack, tiny_teacher, jsonl_file, tmp_path):
    _, api = embedded_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=4, checkpoint_every=2)
    spec["method"] = {"loss": "jsd", "params": {"beta": 0.5}, "data_mode": "onpolicy",
                      "lmbda": 1.0, "generation": {"max_new_tokens": 6}}  # fmt: skip
    spec["student"]["lora"] = {"r": 4, "target_modules": ["q_proj", "v_proj"], "merge": True}
    job, _ = _run(api, spec)
    onpolicy = api.metrics(job["id"], "train/onpolicy")
    assert [m["value"] for m in onpolicy] == [1.0] * 4
    model = api.call("GET", f"/v1/models/{job['output_model_id']}")
    assert model["lineage"]["lora"]["r"] == 4
    assert (Path(model["path"]) / "adapter" / "adapter_model.safetensors").exists()


def test_routed_teachers_by_dataset_field(embedded_stack, tiny_teacher, jsonl_file):
    from ml.data.instructions import TASKS

    _, api = embedded_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=3, checkpoint_every=0)
    spec.pop("teacher")
    spec["teachers"] = [{"model": teacher, "route": task} for task in TASKS]
    spec["routing"] = {"field": "task"}
    job, _ = _run(api, spec)
    lineage = api.call("GET", f"/v1/models/{job['output_model_id']}")["lineage"]
    assert len(lineage["teachers"]) == len(TASKS)


def test_opd_and_skd_jobs_record_their_signals(embedded_stack, tiny_teacher, jsonl_file):
    _, api = embedded_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    spec = distill_spec(teacher, dataset, max_steps=2, checkpoint_every=0)
    spec["method"] = {"loss": "rkl", "data_mode": "opd", "generation": {"max_new_tokens": 6}}
    opd_job, _ = _run(api, spec)
    assert len(api.metrics(opd_job["id"], "train/opd_reverse_kl")) == 2
    spec["method"] = {"loss": "fkl", "data_mode": "skd", "skd_top_k": 5,
                      "generation": {"max_new_tokens": 6}}  # fmt: skip
    skd_job, _ = _run(api, spec)
    rates = [m["value"] for m in api.metrics(skd_job["id"], "train/skd_acceptance")]
    assert len(rates) == 2 and all(0.0 <= r <= 1.0 for r in rates)


def test_dskd_across_vocabularies(embedded_stack, tiny_teacher, tiny_other_vocab_student,
                                  jsonl_file):  # fmt: skip
    _, api = embedded_stack
    teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
    student = api.register(tiny_other_vocab_student)
    spec = distill_spec(teacher, dataset, max_steps=3, checkpoint_every=0)
    spec["student"] = {"model": student}
    spec["method"] = {"loss": "dskd", "params": {"alpha_ce": 0.5}}
    job, _ = _run(api, spec)
    model = api.call("GET", f"/v1/models/{job['output_model_id']}")
    assert model["tokenizer_sha256"] != api.call("GET", f"/v1/models/{teacher}")["tokenizer_sha256"]
    assert model["vocab_size"] == api.call("GET", f"/v1/models/{student}")["vocab_size"]
