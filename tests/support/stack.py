"""Real service processes for end-to-end tests: uvicorn, ``celery worker``, or ``distill serve``,
each started with its own environment and stopped (or SIGKILLed) by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from client.serve import worker_command

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, poll: float = 0.3
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Stack:
    """Processes sharing one environment (database, broker, folders)."""

    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_api(self) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(self.port),
               "--log-level", "warning"]  # fmt: skip
        self._start("api", cmd)
        self.wait_healthy()

    def start_serve(self) -> None:
        cmd = [sys.executable, "-m", "client.cli", "serve", "--port", str(self.port)]
        self._start("serve", cmd)
        self.wait_healthy(timeout=90)

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        return self._start(name, worker_command("cpu,gpu"))

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            for proc in self.procs.values():
                if proc.poll() is not None:
                    raise RuntimeError(f"a process exited early; see {self.log_dir}")
            try:
                return httpx.get(f"{self.url}/v1/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=timeout, what="the API")

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group: no cleanup, no ack, as a crashed host would."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


def stack_env(home: Path, model_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")}
    env.update(
        DISTILL_HOME=str(home),
        DISTILL_MODEL_ROOTS=str(model_root),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        # Short leases and sweeps so that a lost worker is noticed within seconds in tests.
        DISTILL_LEASE_SECONDS="8",
        DISTILL_HEARTBEAT_SECONDS="1",
        DISTILL_SWEEP_INTERVAL_SECONDS="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env
