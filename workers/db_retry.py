"""Worker writes that survive a database restart: each attempt is a fresh session and its own
transaction; an attempt that fails because the connection broke is retried with backoff until a
deadline. A write is only retried whole, so it must be idempotent: the callers make it so
(metrics insert-or-ignore, checkpoint rows delete-then-insert, lease-guarded UPDATEs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from models.session import session_scope

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 4.0


def is_transient(exc: BaseException) -> bool:
    """A broken or refused connection (server restarted, network blip, SQLite busy): the same
    statement can succeed later. Constraint or programming errors are not transient."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


def run_unit(
    url: str,
    work: Callable[[Session, int], T],
    *,
    deadline_seconds: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work(session, attempt)`` in its own committed unit of work, retrying transient
    failures for up to ``deadline_seconds``. ``attempt`` (0, 1, ...) lets a write tell whether
    an earlier attempt may already have committed before its connection broke."""
    deadline = time.monotonic() + deadline_seconds
    delay, attempt = FIRST_DELAY_SECONDS, 0
    while True:
        try:
            with session_scope(url) as session:
                return work(session, attempt)
        except DBAPIError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retry %d in %.2fs",
                        what, type(exc.orig).__name__, attempt + 1, delay)  # fmt: skip
        sleep(delay)
        delay, attempt = min(delay * 2, MAX_DELAY_SECONDS), attempt + 1
