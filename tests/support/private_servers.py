"""Private Redis and PostgreSQL servers that a fault test may kill and restart: own port, own
temporary folder, never the shared servers on 6379 / 5432."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.stack import free_port, wait_until


def require_tool(path: str | None, what: str) -> str:
    """Skip locally when a server binary is missing; fail under CI=true."""
    if path and Path(path).exists():
        return path
    message = f"{what} is not installed"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: fault tests never skip)")
    pytest.skip(message)


class PrivateRedis:
    """``redis-server`` with no persistence: a restart loses every message, as a Redis without
    AOF does (the harder case for the service)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_tool(shutil.which("redis-server"), "redis-server")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.workdir)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.ping, timeout=30, what="the private redis-server")

    def ping(self) -> bool:
        import redis

        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save, connections cut as on a crashed host."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def close(self) -> None:
        self.kill()


def _postgres_bin() -> str:
    versions = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    found = sorted(versions, key=lambda path: int(path.split("/")[4]))
    return str(Path(require_tool(found[-1] if found else None, "PostgreSQL (pg_ctl)")).parent)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free port. PostgreSQL
    refuses to run as root, so as root the cluster belongs to the ``postgres`` OS user."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        # Not under pytest's tmp_path: its parents are private to root, the server is not root.
        self.workdir = Path(tempfile.mkdtemp(prefix="distill-pg-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")  # fmt: skip

    def _run(self, tool: str, *args: str) -> None:
        cmd = [f"{self.bin}/{tool}", *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}\n{done.stderr}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")  # fmt: skip
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                  "-t", "60", "start")  # fmt: skip

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: every backend dies at once, as on a crash (WAL replay
        on the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop_immediately()
            except RuntimeError:
                pass
        time.sleep(0.2)
        shutil.rmtree(self.workdir, ignore_errors=True)
