"""The disk full during a checkpoint write. The artifact root (checkpoints live under it) is a
real, small ``tmpfs`` mounted for this test: room for one checkpoint of the tiny student, not
two. Mounting needs CAP_SYS_ADMIN (root here, as in CI); without it the test skips locally and
fails under CI=true."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml.distillation.checkpointing import checkpoint_name
from tests.faults.checks import assert_checkpoints_intact, assert_metrics_exact, event_messages
from tests.support.api_client import TERMINAL, distill_spec
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack_fixtures import start_real_stack

pytestmark = pytest.mark.realstack
# One checkpoint of the tiny student (weights + AdamW state + RNG + JSON) is about 1.6 MB.
FILESYSTEM_SIZE = "2600k"


def _mount(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "artifacts"
    mount_point.mkdir()
    done = _mount(["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_SIZE},mode=0755", "tmpfs",
                   str(mount_point)])  # fmt: skip
    if done.returncode != 0:
        message = f"cannot mount a small tmpfs here: {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: fault tests never skip)")
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        _mount(["umount", "-l", str(mount_point)])


def test_disk_full_during_checkpoint_keeps_the_previous_one(
    tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file, small_filesystem
):
    """The step-4 checkpoint fits; the step-8 one hits ENOSPC. The partial write is removed,
    the step-4 checkpoint stays intact (its recorded hash still matches), the job fails with an
    event naming ENOSPC; once there is room, a job started from that checkpoint succeeds."""
    require_real_stack()
    with fresh_postgres_database() as database_url:
        stack, api = start_real_stack(
            tmp_path, model_root, stack_logs, database_url=database_url,
            broker_url=fresh_redis_url(), DISTILL_ARTIFACT_ROOT=str(small_filesystem),
        )  # fmt: skip
        teacher, dataset = api.register(tiny_teacher), api.upload_dataset(jsonl_file)
        spec = distill_spec(teacher, dataset, max_steps=12, checkpoint_every=4)
        spec["method"]["teacher_cache"] = "off"  # nothing but checkpoints on the small disk
        job_id = api.call("POST", "/v1/jobs", 201, json=spec)["id"]
        stack.start_worker()
        job = api.wait_status(job_id, TERMINAL, timeout=300)

        assert job["status"] == "failed", job
        assert "ENOSPC" in job["error"], job["error"]
        messages = event_messages(api, job_id)
        assert any(m.startswith("job failed: ") and "ENOSPC" in m for m in messages), messages
        checkpoint_dir = small_filesystem / "jobs" / job_id / "checkpoints"
        assert assert_checkpoints_intact(api, job_id, checkpoint_dir) == [4]
        assert sorted(p.name for p in checkpoint_dir.iterdir()) == [checkpoint_name(4)]
        assert_metrics_exact(api, job_id, 8)  # recorded up to the step whose checkpoint failed

        # Room again (the operator grows the volume): start from the intact checkpoint.
        grown = _mount(["mount", "-o", "remount,size=64m", str(small_filesystem)])
        assert grown.returncode == 0, grown.stderr
        follow = distill_spec(teacher, dataset, max_steps=4, checkpoint_every=0)
        follow["student"] = {"model": {"from_checkpoint": {"job": job_id, "step": 4}}}
        follow_id = api.call("POST", "/v1/jobs", 201, json=follow)["id"]
        done = api.wait_status(follow_id, TERMINAL, timeout=300)
        assert done["status"] == "succeeded", done
        assert_metrics_exact(api, follow_id, 4)
        stack.stop()
