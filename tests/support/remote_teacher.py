"""A remote teacher for tests: ``python -m workers.teacher_server`` started as a second process
on a free loopback port, and a student that shares the teacher's tokenizer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.stack import ROOT, free_port, wait_until


@dataclass
class TeacherProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL, as a crashed server host would die."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextmanager
def teacher_server(
    model_dir: Path, log_dir: Path, *, top_k: int = 32, api_key: str | None = None
) -> Iterator[TeacherProcess]:
    port = free_port()
    cmd = [sys.executable, "-m", "workers.teacher_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--top-k", str(top_k),
           "--device", "cpu"]  # fmt: skip
    if api_key:
        cmd += ["--api-key", api_key]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"teacher-server-{port}.log"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    server = TeacherProcess(f"http://127.0.0.1:{port}", proc, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the teacher server exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=120, what="the teacher server")
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def build_student(teacher_dir: Path, out_dir: Path) -> Path:
    """Every 2nd layer of the teacher, saved with the teacher's tokenizer: a student that reads
    with the remote teacher's vocabulary."""
    from ml.loading import init_student_from_teacher, load_causal_lm, load_tokenizer, save_model

    if not (out_dir / "config.json").is_file():
        student = init_student_from_teacher(load_causal_lm(teacher_dir), 2)
        save_model(student, load_tokenizer(teacher_dir), out_dir)
    return out_dir
