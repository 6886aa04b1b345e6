"""Edit and inject jobs end to end through `distill serve`: posted over HTTP, run by the worker
process, measured, registered as new models with their lineage; the original untouched."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.e2e.conftest import TERMINAL

CITIES = ["Dunholt", "Brisk", "Orvane", "Tessel"]


def _requests(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        subject, other = CITIES[i], CITIES[(i + 1) % len(CITIES)]
        rows.append({
            "prompt": f"The capital city of {subject} is",
            "subject": subject,
            "target_new": " Pell",
            "rephrase_prompts": [f"Name the capital city of {subject}."],
            "locality": [{"prompt": f"The capital city of {other} is", "answer": " Vorn"}],
            "portability": [{"prompt": f"Add 15 and 14. {subject}", "answer": " 29"}],
        })  # fmt: skip
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _documents(tmp_path: Path) -> Path:
    texts = [f"Name the capital city of {c}. Add 1 and {i}. Put a b in order." for i, c in
             enumerate(CITIES * 5)]  # fmt: skip
    return _write(tmp_path / "docs.jsonl", [{"text": t} for t in texts])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from ml.loading import load_causal_lm

    return {k: v.detach().clone() for k, v in load_causal_lm(path).state_dict().items()}


def test_ft_edit_job_registers_an_edited_model_and_keeps_the_original(
    tmp_path, embedded_stack, tiny_teacher
):
    from safetensors.torch import load_file

    from ml.loading import weights_sha256

    _, api = embedded_stack
    original_hash = weights_sha256(tiny_teacher)
    model = api.register(tiny_teacher)
    requests = api.upload_dataset(_write(tmp_path / "edits.jsonl", _requests(2)))
    spec = {
        "kind": "edit",
        "model": model,
        "requests": requests,
        "mode": "batch",
        "method": {"name": "ft", "params": {"layers": [1], "steps": 60, "max_change": 0.5}},
        "portability_disco": {"alpha": 1.0},
    }
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]  # fmt: skip
    job = api.wait_status(job_id, TERMINAL, timeout=600)
    assert job["status"] == "succeeded", (job, api.events(job_id))

    result = job["result"]
    expected = {"reliability/teacher_forced", "reliability/generation",
                "locality/teacher_forced", "portability/generation"}  # fmt: skip
    for part in ("before", "after"):
        assert expected <= set(result[part])
    assert result["after"]["reliability/teacher_forced"] == 1.0, result
    assert result["before"]["reliability/teacher_forced"] < 1.0
    assert 0.0 <= result["after"]["portability_disco/generation"] <= 1.0
    metric = api.metrics(job_id, "edit/reliability/teacher_forced")
    assert [(m["step"], m["value"]) for m in metric] == [(2, 1.0)]

    edited = api.call("GET", f"/v1/models/{job['output_model_id']}")
    assert edited["source_job_id"] == job_id
    assert edited["lineage"]["base_model"]["id"] == model
    assert edited["lineage"]["method"] == "ft"
    assert weights_sha256(tiny_teacher) == original_hash  # the original files were not written

    # The kept delta turns the original into the edited model, and back.
    delta = load_file(result["weight_delta"]["path"])
    assert delta and all(".layers.1." in name for name in delta)  # only the chosen layer
    before, after = _weights(tiny_teacher), _weights(Path(edited["path"]))
    for name, change in delta.items():
        torch.testing.assert_close(before[name].double() + change, after[name].double())
    unchanged = set(before) - set(delta)
    assert all(torch.equal(before[n], after[n]) for n in unchanged)


def test_rome_edit_job_estimates_key_statistics_and_changes_one_projection(
    tmp_path, embedded_stack, tiny_teacher
):
    """The mechanics only: this 2-layer test model is too weakly trained for ROME to take
    (its quality is measured on the facts model in bench/editing_quality.py)."""
    from safetensors.torch import load_file

    _, api = embedded_stack
    model = api.register(tiny_teacher)
    requests = api.upload_dataset(_write(tmp_path / "edits.jsonl", _requests(2)))
    corpus = api.upload_dataset(_documents(tmp_path))
    spec = {
        "kind": "edit",
        "model": model,
        "requests": requests,
        "mode": "batch",
        "method": {"name": "rome", "params": {"layer": 0}},
        "stats": {"corpus": corpus},
    }
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]  # fmt: skip
    job = api.wait_status(job_id, TERMINAL, timeout=600)
    assert job["status"] == "succeeded", (job, api.events(job_id))
    delta = load_file(job["result"]["weight_delta"]["path"])
    assert list(delta) == ["model.layers.0.mlp.down_proj.weight"]
    assert len(job["result"]["steps"]) == 2  # one rank-one update per request
    stats_files = list((Path(job["result"]["weight_delta"]["path"]).parents[2]).rglob("cov_*"))
    assert stats_files, "the key covariance is stored for reuse"


def test_grace_sequential_edit_job_reports_a_curve_and_ships_its_codebook(
    tmp_path, embedded_stack, tiny_teacher
):
    from ml.editing.metrics import greedy_texts
    from ml.loading import GRACE_CODEBOOK, load_causal_lm, load_tokenizer

    _, api = embedded_stack
    model = api.register(tiny_teacher)
    rows = _requests(4)
    requests = api.upload_dataset(_write(tmp_path / "edits.jsonl", rows))
    spec = {"kind": "edit", "model": model, "requests": requests, "mode": "sequential",
            "method": {"name": "grace", "params": {"layer": 1}},
            "sequential": {"eval_every": 2, "collapse": {"min_locality": 0.0}}}  # fmt: skip
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    job = api.wait_status(job_id, TERMINAL, timeout=600)
    assert job["status"] == "succeeded", (job, api.events(job_id))
    curve = job["result"]["curve"]
    assert [p["edits"] for p in curve] == [2, 4]
    retention = api.metrics(job_id, "edit/newest/reliability/generation")
    assert [m["step"] for m in retention] == [2, 4]

    edited = api.call("GET", f"/v1/models/{job['output_model_id']}")
    path = Path(edited["path"])
    assert (path / GRACE_CODEBOOK).is_file()
    assert edited["weights_sha256"] != api.call("GET", f"/v1/models/{model}")["weights_sha256"]
    reloaded, tokenizer = load_causal_lm(path), load_tokenizer(path)
    width = len(tokenizer.encode(" Pell", add_special_tokens=False))
    texts = greedy_texts(reloaded, tokenizer, [r["prompt"] for r in rows], [width] * len(rows))
    assert job["result"]["after"]["reliability/generation"] == sum(
        t.strip() == "Pell" for t in texts
    ) / len(rows)


def test_a_layer_outside_the_model_is_refused_at_submission(tmp_path, embedded_stack, tiny_teacher):
    _, api = embedded_stack
    model = api.register(tiny_teacher)
    requests = api.upload_dataset(_write(tmp_path / "edits.jsonl", _requests(1)))
    spec = {"kind": "edit", "model": model, "requests": requests,
            "method": {"name": "grace", "params": {"layer": 7}}}  # fmt: skip
    problem = api.call("POST", "/v1/jobs", 422, json=spec)
    assert problem["errors"][0]["loc"] == ["body", "method", "params", "layer"]


def test_inject_job_trains_an_adapter_and_scores_held_out_questions(
    tmp_path, embedded_stack, tiny_teacher
):
    _, api = embedded_stack
    model = api.register(tiny_teacher)
    docs = _write(tmp_path / "docs.jsonl", [
        {"text": "The capital city of Dunholt is Pell."},
        {"text": "The capital city of Brisk is Vorn."},
    ])  # fmt: skip
    qa = _write(tmp_path / "qa.jsonl", [
        {"prompt": "The capital city of Dunholt is", "response": " Pell"},
        {"prompt": "The capital city of Brisk is", "response": " Vorn"},
    ])  # fmt: skip
    held_out = _write(tmp_path / "eval.jsonl", [
        {"prompt": "Name the capital city of Dunholt.", "response": " Pell"},
    ])  # fmt: skip
    spec = {"kind": "inject", "model": model, "documents": api.upload_dataset(docs),
            "qa": api.upload_dataset(qa), "eval": api.upload_dataset(held_out),
            "method": {"name": "prompt_distillation", "params": {"steps": 12, "batch_size": 2,
                                                                 "warmup_steps": 1}}}  # fmt: skip
    job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
    job = api.wait_status(job_id, TERMINAL, timeout=600)
    assert job["status"] == "succeeded", (job, api.events(job_id))
    assert [m["step"] for m in api.metrics(job_id, "train/loss")] == list(range(1, 13))
    assert set(job["result"]["after"]) >= {"teacher_forced", "exact_match"}
    produced = api.call("GET", f"/v1/models/{job['output_model_id']}")
    assert produced["lineage"]["kind"] == "inject"
    assert produced["lineage"]["method"] == "prompt_distillation"


def test_cli_runs_an_edit_job_and_decodes_with_disco(tmp_path, embedded_stack, tiny_teacher):
    import subprocess
    import sys

    import yaml

    from tests.support.stack import ROOT

    stack, _ = embedded_stack

    def distill(*args: str) -> dict:
        command = [sys.executable, "-m", "client.cli", "--json", *args]
        done = subprocess.run(command, cwd=ROOT, env=stack.env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    model = distill("models", "register", str(tiny_teacher))["id"]
    requests = distill("datasets", "upload", str(_write(tmp_path / "e.jsonl", _requests(1))))
    spec = {
        "kind": "edit",
        "model": model,
        "requests": requests["id"],
        "mode": "single",
        "method": {"name": "ft", "params": {"layers": [1], "steps": 60, "max_change": 0.5}},
    }
    spec_file = tmp_path / "edit.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    job = distill("jobs", "create", "-f", str(spec_file), "--watch")
    assert job["status"] == "succeeded" and job["kind"] == "edit"
    edited = job["output_model_id"]
    prompt = _requests(1)[0]["prompt"]
    plain = distill("models", "generate", model, prompt, "--max-new-tokens", "2")
    disco = distill("models", "generate", edited, prompt, "--max-new-tokens", "2",
                    "--decoding", "disco", "--alpha", "1.0")  # fmt: skip
    assert len(plain["completions"]) == len(disco["completions"]) == 1
    # The edit made " Pell" the greedy answer; contrasting with the original keeps it.
    assert disco["completions"][0] == "Pell" != plain["completions"][0]
