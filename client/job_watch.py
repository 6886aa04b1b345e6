"""Follow a running job in the terminal: a progress bar, its events, its latest training loss.

Fed by the job's Server-Sent Events stream (``GET /v1/jobs/{id}/stream``): status messages move
the bar, event messages are written above it, ``train/loss`` metrics update the postfix. The
stream resumes by itself after a dropped connection, so nothing is shown twice.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from client.job_stream import StreamMessage
from client.sdk import DistillClient

LOSS_METRIC_KEY = "train/loss"
# A job sends several metrics per step: the bar is drawn when its status or total changes, and
# for a new step or loss at most this often (a terminal stays live, a log file stays small).
TERMINAL_REDRAW_SECONDS = 0.1
FILE_REDRAW_SECONDS = 5.0


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
        is_tty = getattr(self.stream, "isatty", lambda: False)()
        self._min_interval = TERMINAL_REDRAW_SECONDS if is_tty else FILE_REDRAW_SECONDS
        self._drawn: tuple[Any, ...] | None = None
        self._drawn_at = 0.0

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
        self.bar.set_postfix(postfix, refresh=False)  # close() draws the latest state
        # A new status or total is drawn at once; step and loss at most every interval.
        shown = (self.bar.total, postfix["status"], self.bar.n, postfix.get("loss"))
        now = time.monotonic()
        if self._drawn is not None and self._drawn[:2] == shown[:2]:
            if self._drawn == shown or now - self._drawn_at < self._min_interval:
                return
        self.bar.refresh()
        self._drawn, self._drawn_at = shown, now

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
