"""What every fault test asserts after the fault: nothing lost, nothing recorded twice."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from ml.distillation.checkpointing import checkpoint_name
from tests.support.api_client import Api
from workers.runtime import hash_tree

STEP_KEYS = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s")


def assert_metrics_exact(api: Api, job_id: str, last_step: int) -> dict[str, list[int]]:
    """Each (key, step) exactly once; every per-step key holds steps 1..last_step, no gap."""
    steps_by_key: dict[str, list[int]] = defaultdict(list)
    for row in api.call("GET", f"/v1/jobs/{job_id}/metrics", params={"limit": 100000})["items"]:
        steps_by_key[row["key"]].append(row["step"])
    for key, steps in steps_by_key.items():
        twice = sorted(step for step, n in Counter(steps).items() if n > 1)
        assert not twice, f"{key} recorded twice at steps {twice}"
    for key in STEP_KEYS:
        assert sorted(steps_by_key[key]) == list(range(1, last_step + 1)), (
            f"{key}: steps are not exactly 1..{last_step}: {sorted(steps_by_key[key])}"
        )
    return dict(steps_by_key)


def event_messages(api: Api, job_id: str) -> list[str]:
    return [e["message"] for e in api.events(job_id)]


def claims(api: Api, job_id: str) -> list[str]:
    return [m for m in event_messages(api, job_id) if m.startswith("claimed by")]


def assert_checkpoints_intact(api: Api, job_id: str, checkpoint_dir: Path) -> list[int]:
    """Every recorded checkpoint is on disk with its recorded hash, and no temporary checkpoint
    directory is left beside them. Returns the recorded steps."""
    rows = api.call("GET", f"/v1/jobs/{job_id}/checkpoints")["items"]
    for row in rows:
        path = checkpoint_dir / checkpoint_name(row["step"])
        assert path.is_dir(), f"checkpoint {row['step']} recorded but missing on disk"
        assert hash_tree(path)[0] == row["sha256"], f"checkpoint {row['step']} changed on disk"
    if checkpoint_dir.is_dir():
        leftovers = [p.name for p in checkpoint_dir.iterdir() if p.name.startswith(".")]
        assert not leftovers, f"temporary checkpoint directories left: {leftovers}"
    return sorted(row["step"] for row in rows)
