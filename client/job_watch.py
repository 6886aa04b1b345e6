"""Follow a running job in the terminal: a progress bar, its events, its latest training loss."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from client.sdk import DistillClient

LOSS_METRIC_KEY = "train/loss"


class JobProgressView:
    """Turns successive polls of one job into a tqdm bar with events written above it.

    Call :meth:`update` with each fresh job document; it fetches only the events and loss
    values that are new since the previous call.
    """

    def __init__(self, client: DistillClient, job_id: str, stream: TextIO | None = None) -> None:
        self.client = client
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.last_event_id: Any = None
        self.last_loss_step: int | None = None
        self.latest_loss: float | None = None
        self.bar = tqdm(
            total=None, unit="step", dynamic_ncols=True, file=self.stream, desc=job_id, leave=True
        )

    def update(self, job: dict[str, Any]) -> None:
        self._print_new_events()
        self._refresh_loss()
        progress = job.get("progress") or {}
        total_steps = progress.get("total_steps")
        if total_steps and self.bar.total != total_steps:
            self.bar.total = total_steps
        step = progress.get("step") or 0
        if step != self.bar.n:
            self.bar.n = step
        postfix: dict[str, Any] = {"status": job.get("status")}
        if self.latest_loss is not None:
            postfix["loss"] = f"{self.latest_loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def _print_new_events(self) -> None:
        # Drain every page so a burst of events between two polls is shown in full.
        while True:
            events = self.client.events(self.job_id, after_id=self.last_event_id)
            if not events:
                return
            for event in events:
                level = str(event.get("level", "info")).upper()
                tqdm.write(f"[{level}] {event.get('message', '')}", file=self.stream)
            newest_id = events[-1].get("id", self.last_event_id)
            if newest_id == self.last_event_id:
                return  # the server ignored after_id: never loop on the same page
            self.last_event_id = newest_id

    def _refresh_loss(self) -> None:
        rows = self.client.metrics(self.job_id, key=LOSS_METRIC_KEY, step_min=self.last_loss_step)
        if not rows:
            return
        latest = max(rows, key=lambda row: row.get("step", 0))
        self.last_loss_step = latest.get("step")
        value = latest.get("value")
        self.latest_loss = float(value) if value is not None else None


def watch_job(
    client: DistillClient, job_id: str, poll: float = 1.0, stream: TextIO | None = None
) -> dict[str, Any]:
    """Show the job's progress until it reaches a terminal status; returns the final job."""
    view = JobProgressView(client, job_id, stream)
    try:
        return client.wait(job_id, poll=poll, on_update=view.update)
    finally:
        view.close()
