"""``distill serve``: the API and a worker beside it. With no settings this is the embedded
default (SQLite + a SQLAlchemy broker under DISTILL_HOME): nothing else to install or start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


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
    procs = [
        subprocess.Popen(worker_command(), env=os.environ.copy(), preexec_fn=_die_with_parent)
        for _ in range(workers)
    ]
    try:
        uvicorn.run("api.app:app", host=host, port=port, log_level="warning")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0
