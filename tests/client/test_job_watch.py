"""The terminal view of a job: its bar follows the stream without a redraw per message.

A job sends several metrics per step; drawing the bar for each wrote 262 kB for the README's
300-step demo into a log file. Here a StringIO (not a terminal) gets a job's worth of messages."""

from __future__ import annotations

import io

from client.job_stream import StreamMessage
from client.job_watch import JobProgressView

STEPS = 300
METRICS_PER_STEP = ("train/loss", "train/loss_ce", "train/lr", "train/grad_norm", "train/tokens")


def _messages() -> list[StreamMessage]:
    def status(state: str, step: int) -> StreamMessage:
        progress = {"step": step, "total_steps": STEPS}
        return StreamMessage("status", {"status": state, "progress": progress}, None)

    out = [status("queued", 0), status("running", 0)]
    for step in range(1, STEPS + 1):
        for key in METRICS_PER_STEP:
            value = 1.0 / step if key == "train/loss" else 0.5
            out.append(StreamMessage("metric", {"key": key, "step": step, "value": value}, None))
        if step % 10 == 0:
            out.append(status("running", step))
    out.append(StreamMessage("event", {"level": "info", "message": "student saved"}, None))
    out.append(status("succeeded", STEPS))
    return out


def test_a_log_file_gets_few_redraws_and_the_final_state() -> None:
    stream = io.StringIO()
    view = JobProgressView("job_1", stream)
    for message in _messages():
        view.handle(message)
    view.close()
    text = stream.getvalue()
    redraws = text.count("\r")
    # Status changes (queued, running, succeeded) and the event line are drawn; a job this fast
    # (well under the file interval) adds no step-only redraws.
    assert redraws <= 12, redraws
    assert len(text) < 3000, len(text)
    final = text.rstrip("\n").splitlines()[-1].split("\r")[-1]
    assert f"{STEPS}/{STEPS}" in final and "succeeded" in final
    assert f"loss={1.0 / STEPS:.4f}" in final
    assert "[INFO] student saved" in text


def test_a_terminal_is_redrawn_as_the_job_moves(monkeypatch) -> None:
    """On a terminal a new step is drawn once its interval has passed."""
    import client.job_watch as job_watch

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = iter(float(i) for i in range(100_000))  # each call one second later
    monkeypatch.setattr(job_watch.time, "monotonic", lambda: next(clock))
    stream = Terminal()
    view = JobProgressView("job_1", stream)
    for message in _messages():
        view.handle(message)
    view.close()
    # One draw per step (its first metric; the rest repeat the shown state), not one per message.
    redraws = stream.getvalue().count("\r")
    assert STEPS <= redraws <= STEPS + 20, redraws
