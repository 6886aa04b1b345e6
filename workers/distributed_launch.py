"""Launches a job's training in ``resources.nproc`` processes and watches them.

The worker that claimed the job stays its owner: it keeps the lease (``LeaseKeeper``), starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m workers.distributed_rank
<job_id> <launch.json>`` as a child in its own session, and waits. ``--standalone`` makes
torchrun rendezvous on a free local port, so jobs on one host never collide. Rank 0 writes
through the same ``JobRecorder`` (the lease's worker id travels in ``launch.json``); ranks > 0
write nothing (``ml/distillation/distributed.py``).

Cancel, pause and a lost lease reach the ranks through a stop file that rank 0 reads between
steps; every rank stops at the same step, and rank 0 records the outcome as one process would
(pause checkpoints first). Ranks that do not stop within ``STOP_GRACE_SECONDS`` are terminated
(torchrun passes SIGTERM on, then SIGKILL), and whatever rank is left is killed by the pid it
wrote, so no process outlives its job. A job the ranks left unfinished (a crash, a kill) is
finished here: ``cancelled`` if a cancel was asked for, ``failed`` otherwise, with the tail of
the ranks' log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr
from sqlalchemy import select

from api.config import Settings
from ml.distillation.recipe_config import RecipeConfig
from models import Job
from models.session import session_scope
from workers.runtime import JobRecorder, LeaseLost, job_dir
from workers.scheduling import LIVE_STATUSES

log = logging.getLogger(__name__)
ENTRY_MODULE = "workers.distributed_rank"
STOP_GRACE_SECONDS = 30.0  # from a stop request to SIGTERM of the ranks that did not stop
TERM_GRACE_SECONDS = 40.0  # from SIGTERM to SIGKILL (torchrun itself waits 30 s for its ranks)
POLL_SECONDS = 0.5


class StopControl(Protocol):
    """What the training loop asks between steps, and why it stopped: ``LeaseKeeper`` in one
    process, ``StopFile`` in rank 0 of several."""

    cancel_requested: threading.Event
    pause_requested: threading.Event
    lost: threading.Event

    def should_stop(self) -> bool: ...


class StopFile:
    """Rank 0's view of the launcher's stop requests: the stop file's word (``cancel``,
    ``pause`` or ``lost``), and a launcher that is gone counts as a lost lease."""

    def __init__(self, path: Path, launcher_pid: int) -> None:
        self.path, self.launcher_pid = path, launcher_pid
        self.cancel_requested = threading.Event()
        self.pause_requested = threading.Event()
        self.lost = threading.Event()

    def should_stop(self) -> bool:
        try:
            word = self.path.read_text().strip()
        except FileNotFoundError:
            word = ""
        if word == "cancel":
            self.cancel_requested.set()
        elif word == "pause":
            self.pause_requested.set()
        elif word or not _alive(self.launcher_pid):
            self.lost.set()
        return any(e.is_set() for e in (self.cancel_requested, self.pause_requested, self.lost))


def run_dir(settings: Settings, job_id: str) -> Path:
    """Where a multi-process run keeps its launch file, stop file, rank pids and log."""
    return job_dir(settings, job_id) / "ranks"


def launch_ranks(
    settings: Settings,
    job: Job,
    config: RecipeConfig,
    resume_from: Path | None,
    recorder: JobRecorder,
    keeper: StopControl,
) -> None:
    """Train ``job`` in ``job.nproc`` processes, wait for them, and settle how the job ended."""
    folder = run_dir(settings, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("rank-*.pid"), folder / "stop"]:  # a resumed job's last run
        old.unlink(missing_ok=True)
    launch = folder / "launch.json"
    launch.write_text(
        json.dumps(
            {
                "config": config.to_json(),
                "resume_from": str(resume_from) if resume_from else None,
                "worker_id": recorder.worker_id,
                "launcher_pid": os.getpid(),
                "run_dir": str(folder),
            }
        )
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={job.nproc}", "--max-restarts=0",
               "-m", ENTRY_MODULE, job.id, str(launch)]  # fmt: skip
    log_path = folder / "ranks.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(command, env=rank_env(settings, job.nproc), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    backend = "nccl" if config.device.startswith("cuda") else "gloo"
    recorder.event("info", f"training in {job.nproc} processes ({backend})",
                   {"nproc": job.nproc, "backend": backend, "launcher_pid": proc.pid,
                    "log": str(log_path)})  # fmt: skip
    try:
        code = _wait(proc, keeper, folder / "stop")
    finally:
        if proc.poll() is None:  # this worker is going down: take the ranks with it
            _terminate(proc)
        _kill_leftover_ranks(folder)
    _settle(settings, job.id, recorder, keeper, code, log_path)


def _wait(proc: subprocess.Popen[bytes], keeper: StopControl, stop_file: Path) -> int:
    said, said_at = "", 0.0
    while proc.poll() is None:
        if keeper.should_stop():
            word = (
                "cancel"
                if keeper.cancel_requested.is_set()
                else "pause"
                if keeper.pause_requested.is_set()
                else "lost"
            )
            if word != said:  # a cancel may follow a pause: rank 0 sees the latest word
                stop_file.write_text(word)
                said, said_at = word, said_at or time.monotonic()
            elif time.monotonic() - said_at > STOP_GRACE_SECONDS:
                log.warning("ranks did not stop within %.0f s; terminating", STOP_GRACE_SECONDS)
                _terminate(proc)
        time.sleep(POLL_SECONDS)
    return int(proc.returncode)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM torchrun (it passes the signal to its ranks), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TERM_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def rank_pids(folder: Path) -> list[int]:
    """Pids the ranks of the latest run wrote (``rank-<r>.pid``)."""
    return [int(p.read_text()) for p in sorted(folder.glob("rank-*.pid")) if p.read_text()]


def is_rank_process(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) training rank of some job."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and ENTRY_MODULE.encode() in cmdline


def _kill_leftover_ranks(folder: Path) -> None:
    # Ranks run in sessions of their own (torchrun starts them so): a SIGKILL of torchrun
    # would orphan them. Checked by command line, so a reused pid is never hit.
    for pid in rank_pids(folder):
        if is_rank_process(pid):
            log.warning("rank process %d outlived its launcher; killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _settle(settings: Settings, job_id: str, recorder: JobRecorder, keeper: StopControl,
            code: int, log_path: Path) -> None:  # fmt: skip
    """Finish a job the ranks left live under this worker's lease."""
    with session_scope(settings.resolved_database_url) as session:
        status, owner = session.execute(
            select(Job.status, Job.lease_owner).where(Job.id == job_id)
        ).one()
    if owner != recorder.worker_id or status not in LIVE_STATUSES:
        if owner is not None and owner != recorder.worker_id:
            raise LeaseLost(job_id)  # another worker holds it now
        return  # rank 0 finished it (succeeded, failed, cancelled or paused)
    if keeper.cancel_requested.is_set():
        recorder.event("info", "cancelled; training processes stopped", {"exit_code": code})
        recorder.finish("cancelled")
        return
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    recorder.event("error", f"training processes exited with code {code}",
                   {"log_tail": "\n".join(tail), "log": str(log_path)})  # fmt: skip
    recorder.finish("failed", error=f"training processes exited with code {code}")


def rank_env(settings: Settings, nproc: int) -> dict[str, str]:
    """The worker's environment with its settings spelled out, so the ranks read the very
    settings this worker runs with (tests build them in process), plus CPU threads per rank."""
    env = dict(os.environ)
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        key = alias if isinstance(alias, str) else f"DISTILL_{name.upper()}"
        value = getattr(settings, name)
        if value is None:
            env.pop(key, None)
        elif isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        else:
            env[key] = str(value)
    # torchrun would set 1 thread per rank; a many-core CPU host wants its cores shared out.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
