"""``distill demo``: the README's first command. Builds a small but real teacher (a BPE tokenizer
and a tiny LLaMA trained here on the project's synthetic instruction set), starts the embedded
service, and runs one distillation through the REST API, watched live, ending with held-out
metrics of the teacher, the untrained student and the distilled student."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from client.job_watch import watch_job
from client.rendering import format_result_table
from client.sdk import DistillClient

TRAIN_RECORDS, EVAL_RECORDS = 4000, 200


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def prepare_data(workdir: Path, seed: int) -> tuple[Path, Path, list[dict[str, Any]]]:
    from ml.data.instructions import generate_instruction_records, split_records, write_jsonl

    records = generate_instruction_records(TRAIN_RECORDS + EVAL_RECORDS, seed)
    train, held_out = split_records(records, EVAL_RECORDS / len(records), seed)
    workdir.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, workdir / "train.jsonl")
    write_jsonl(held_out, workdir / "eval.jsonl")
    return workdir / "train.jsonl", workdir / "eval.jsonl", train


def prepare_teacher(model_root: Path, train: list[dict[str, Any]], steps: int, seed: int) -> Path:
    from ml.data.demo_teacher import build_demo_teacher

    out = model_root / f"demo-teacher-s{steps}"
    if (out / "config.json").exists():
        _say(f"reusing the teacher trained earlier: {out}")
        return out
    _say(f"training the teacher for {steps} steps on {len(train)} examples (CPU minutes)")
    stats = build_demo_teacher(out, train_records=train, steps=steps, seed=seed,
                               log=lambda line: print(f"    {line}", flush=True))  # fmt: skip
    _say(f"teacher trained in {stats['seconds']:.0f}s, final train loss {stats['final_loss']:.3f}")
    return out


def demo_spec(teacher_id: str, train_id: str, eval_id: str, steps: int) -> dict[str, Any]:
    return {
        "kind": "distill",
        "name": "demo-student",
        "metadata": {"source": "distill demo"},
        "teacher": {"model": teacher_id},
        "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
        "dataset": {"train": train_id, "eval": eval_id},
        "method": {"loss": "fkl", "params": {"temperature": 1.0, "alpha_ce": 0.1}},
        "training": {"max_steps": steps, "batch_size": 16, "lr": 1e-3, "warmup_steps": 20,
                     "schedule": "cosine", "max_length": 64, "checkpoint_every": 100,
                     "seed": 0},
        "evaluation": {"max_examples": EVAL_RECORDS, "max_new_tokens": 16},
    }  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    quick = bool(getattr(args, "quick", False))
    teacher_steps = getattr(args, "teacher_steps", None) or (150 if quick else 600)
    student_steps = 60 if quick else 300
    started = time.perf_counter()
    from api.config import get_settings

    settings = get_settings()
    model_root = settings.resolved_model_roots[0]
    train_path, eval_path, train = prepare_data(settings.home / "demo", seed=0)
    teacher_dir = prepare_teacher(model_root, train, teacher_steps, seed=0)

    port = _free_port()
    _say(f"starting the embedded service on 127.0.0.1:{port} (SQLite + a serverless broker)")
    log_path = settings.home / "demo-serve.log"
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "client.cli", "serve", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
    try:
        client = _connect(settings.home, port, server, log_path)
        _say("uploading the datasets and registering the teacher")
        train_ds = client.upload_dataset(train_path, name="demo-train")
        eval_ds = client.upload_dataset(eval_path, name="demo-eval")
        teacher = client.register_model(teacher_dir, name="demo-teacher")
        spec = demo_spec(teacher["id"], train_ds["id"], eval_ds["id"], student_steps)
        job = client.create_job(spec)
        _say(f"job {job['id']} queued: fkl distillation into a half-depth student")
        print(f"    spec: {json.dumps(spec['method'])} {json.dumps(spec['training'])}")
        final = watch_job(client, job["id"], poll=1.0)
        return _report(client, final, time.perf_counter() - started)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _connect(home: Path, port: int, server: subprocess.Popen[bytes], log: Path) -> DistillClient:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited early; see {log}")
        creds = home / "credentials.json"
        if creds.exists():
            key = json.loads(creds.read_text())["api_key"]
            client = DistillClient(base_url=f"http://127.0.0.1:{port}", api_key=key)
            try:
                client.health()
                return client
            except Exception:
                client.close()
        time.sleep(0.5)
    raise SystemExit(f"the service did not come up in 120 s; see {log}")


def _report(client: DistillClient, job: dict[str, Any], seconds: float) -> int:
    if job["status"] != "succeeded":
        _say(f"job ended {job['status']}: {job.get('error')}")
        return 1
    print()
    examples = int(job["result"]["student"].get("examples", 0))
    _say(f"held-out metrics ({examples} examples):")
    print(format_result_table(job["result"]))
    model = client.get_model(job["output_model_id"])
    print()
    _say(f"student {model['id']}: {model['num_parameters']:,} parameters, saved at {model['path']}")
    _say(f"download it with: distill models download {model['id']} ./student")
    initial, final = job["result"]["initial_student"], job["result"]["student"]
    better = final["loss"] < initial["loss"]
    _say(f"student held-out loss {initial['loss']:.3f} -> {final['loss']:.3f} "
         f"({'better' if better else 'NOT better'} than its initialisation); "
         f"total {seconds:.0f}s")  # fmt: skip
    return 0 if better else 1
