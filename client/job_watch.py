"""Follow a running job in the terminal: a progress bar, its events, its latest training loss.

Fed by the job's Server-Sent Events stream (``GET /v1/jobs/{id}/stream``): status messages move
the bar, event messages are written above it, ``train/loss`` metrics update the postfix. The
stream resumes by itself after a dropped connection, so nothing is shown twice.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from client.job_stream import StreamMessage
from client.sdk import DistillClient

LOSS_METRIC_KEY = "train/loss"


class JobProgressView:
    """Turns stream messages of one job into a tqdm bar with events written above it."""

    def __init__(self, job_id: str, stream: TextIO | None = None) -> None:
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.job: dict[str, Any] | None = None
        self.latest_loss: float | None = None
        self.bar = tqdm(
            total=None, unit="step", dynamic_ncols=True, file=self.stream, desc=job_id, leave=True
        )

    def handle(self, message: StreamMessage) -> None:
        if message.event == "status":
            self.job = message.data
        elif message.event == "event":
            level = str(message.data.get("level", "info")).upper()
            tqdm.write(f"[{level}] {message.data.get('message', '')}", file=self.stream)
        elif message.event == "metric" and message.data.get("key") == LOSS_METRIC_KEY:
            self.latest_loss = float(message.data["value"])
            self.bar.n = max(self.bar.n, int(message.data.get("step") or 0))
        self._redraw()

    def _redraw(self) -> None:
        if self.job is None:
            return
        progress = self.job.get("progress") or {}
        total_steps = progress.get("total_steps")
        if total_steps and self.bar.total != total_steps:
            self.bar.total = total_steps
        self.bar.n = max(self.bar.n, progress.get("step") or 0)
        postfix: dict[str, Any] = {"status": self.job.get("status")}
        if self.latest_loss is not None:
            postfix["loss"] = f"{self.latest_loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def watch_job(
    client: DistillClient, job_id: str, poll: float = 1.0, stream: TextIO | None = None
) -> dict[str, Any]:
    """Show the job's progress until it reaches a terminal status; returns the final job.
    (``poll`` is kept for callers of the polling version; the stream needs none.)"""
    del poll
    view = JobProgressView(job_id, stream)
    try:
        for message in client.stream_job(job_id):
            view.handle(message)
            if message.event == "end":
                break
    finally:
        view.close()
    return client.get_job(job_id)  # the final document, with result and output model
