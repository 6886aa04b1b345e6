"""The HTTP client and the job spec that end-to-end and fault tests share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import wait_until

TERMINAL = ("succeeded", "failed", "cancelled")


class Api:
    """A thin httpx wrapper for tests: raises with the problem body on unexpected statuses."""

    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == expect, response.text
        return (
            response.json()
            if response.headers.get("content-type", "").endswith("json")
            else response
        )

    def upload_dataset(self, path: Path) -> str:
        with path.open("rb") as fh:
            return self.call("POST", "/v1/datasets", 201, files={"file": (path.name, fh)})["id"]

    def register(self, path: Path) -> str:
        return self.call("POST", "/v1/models", 201, json={"path": str(path)})["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/jobs/{job_id}")

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float) -> dict:
        return wait_until(
            lambda: (j := self.job(job_id))["status"] in statuses and j,
            timeout=timeout,
            what=f"job {job_id} to reach {statuses}",
        )

    def pause_after_step(self, job_id: str, step: int) -> dict[str, Any]:
        """Once the job has recorded ``step``, pause it and wait until it is ``paused`` (the
        test is skipped if the job finished before the pause landed); returns the job."""
        wait_until(lambda: self.job(job_id)["progress"]["step"] >= step, timeout=300,
                   what="the first metrics")  # fmt: skip
        pausing = self.call("POST", f"/v1/jobs/{job_id}/pause")
        if pausing["status"] == "succeeded":  # pragma: no cover - a machine far faster than ours
            pytest.skip("the job finished before the pause landed")
        paused = self.wait_status(job_id, ("paused", *TERMINAL), timeout=120)
        assert paused["status"] == "paused", self.events(job_id)
        return paused

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/v1/jobs/{job_id}/events")["items"]

    def metrics(self, job_id: str, key: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/v1/jobs/{job_id}/metrics", params={"key": key})["items"]


def distill_spec(teacher: str, dataset: str, **training: Any) -> dict[str, Any]:
    return {
        "kind": "distill",
        "name": "e2e-student",
        "teacher": {"model": teacher},
        "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
        "dataset": {"train": dataset},
        "method": {"loss": "fkl", "params": {"temperature": 1.0, "alpha_ce": 0.2}},
        "training": {"max_steps": 12, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 3,
                     "warmup_steps": 2, **training},
        "evaluation": {"max_examples": 16, "max_new_tokens": 8},
    }  # fmt: skip


def credentials(home: Path) -> str:
    return json.loads((home / "credentials.json").read_text())["api_key"]
