"""``distill serve``: the API and a worker beside it. With no settings this is the embedded
default (SQLite + a SQLAlchemy broker under DISTILL_HOME): nothing else to install or start."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time


def worker_command(queues: str = "cpu,gpu") -> list[str]:
    # --pool solo: one process per device, and CUDA never initialised in a fork parent.
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "--pool", "solo", "--concurrency", "1", "-Q", queues, "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip


def _die_with_parent() -> None:
    """In the worker child, before exec: the kernel sends SIGTERM when `distill serve` dies,
    however it dies (SIGKILL included), so no orphan worker keeps consuming jobs."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit the `finally`
    # below still runs and stops the workers.
    raise SystemExit(0)


class _SupervisedWorkers:
    """The worker processes beside the API. One that exits while `serve` runs (a crash, an
    OOM kill, an unrecoverable broker error at start) is started again, so queued jobs never
    wait on a worker that is gone; one that keeps dying right after its start is restarted
    with a growing delay (up to a minute) instead of in a tight loop."""

    def __init__(self, count: int) -> None:
        self.procs = [self._start() for _ in range(count)]
        self._started = [time.monotonic()] * count
        self._quick_deaths = [0] * count
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watcher.start()

    @staticmethod
    def _start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(worker_command(), preexec_fn=_die_with_parent)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for slot, proc in enumerate(self.procs):
                if proc.poll() is None:
                    continue
                if time.monotonic() - self._started[slot] < 30:
                    self._quick_deaths[slot] += 1
                    delay = min(60.0, 2.0 ** self._quick_deaths[slot])
                else:
                    self._quick_deaths[slot], delay = 0, 0.0
                print(f"distill: worker {proc.pid} exited with {proc.returncode}; "
                      f"starting another in {delay:.0f}s", file=sys.stderr, flush=True)  # fmt: skip
                if self._stopping.wait(delay):
                    return
                self.procs[slot] = self._start()
                self._started[slot] = time.monotonic()

    def stop(self) -> None:
        self._stopping.set()
        self._watcher.join()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> int:
    import uvicorn

    from api.config import get_settings
    from api.migrate import upgrade
    from api.projects.admin import ensure_local_credentials

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    creds = ensure_local_credentials(settings, f"http://{host}:{port}")
    print(f"distill: project {creds['project_id']}; key in {settings.home / 'credentials.json'}")
    print(f"distill: database {settings.resolved_database_url}")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    supervised = _SupervisedWorkers(workers)
    try:
        uvicorn.run("api.app:app", host=host, port=port, log_level="warning")
    finally:
        supervised.stop()
    return 0
