"""Idempotency-Key rules (the IETF ``Idempotency-Key`` header draft, as Stripe uses it).

A creating POST sent with a key inserts an ``idempotency_keys`` row *first*, in the request's
own transaction, and fills in the response at the end of that same transaction. So:

- the unique constraint on (project, key) decides between concurrent requests: the second
  INSERT waits on the first's uncommitted row; on PostgreSQL a short ``lock_timeout`` turns
  that wait into a 409 "in progress" instead of a blocked request;
- a committed key always has its object and its response, and a request that fails (any 4xx
  or 5xx) rolls back and leaves no key, so a retry runs again;
- the same key with the same request fingerprint replays the stored response byte for byte;
  with another fingerprint it is refused (422), naming the header.

Never commits: the request's session dependency does.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidInput
from api.idempotency import repository
from models import IdempotencyKey, utcnow

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# How long a second request waits on a first one's uncommitted key before answering 409.
IN_PROGRESS_WAIT_MS = 200
_HEADER_LOC: list[str | int] = ["header", HEADER]


class IdempotencyKeyInvalid(InvalidInput):
    title = "Invalid Idempotency-Key"


class IdempotencyKeyReused(InvalidInput):
    title = "Idempotency-Key reused with another request"


class IdempotencyKeyInProgress(Conflict):
    title = "Idempotency-Key in progress"


class IdempotentReplay(Exception):  # noqa: N818 - not an error: the stored answer to send
    """Raised to short-circuit a request whose key already has a stored response."""

    def __init__(self, row: IdempotencyKey) -> None:
        super().__init__(row.key)
        self.status = row.response_status or 200
        self.content_type = row.response_content_type or "application/json"
        self.body = row.response_body or b""


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        msg = f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        raise IdempotencyKeyInvalid(f"{HEADER}: {msg}", errors=[{"loc": _HEADER_LOC, "msg": msg}])
    return key


def claim(
    *,
    session: Session,
    project_id: str,
    key: str,
    request_hash: str,
    method: str,
    path: str,
    ttl_hours: float,
) -> IdempotencyKey:
    """Insert the key row for this request, or raise: a replay, a reuse (422) or in progress
    (409). The returned row is still open: ``record_response`` completes it."""
    check_key(key)
    now = utcnow()
    existing = repository.get(session, project_id=project_id, key=key)
    if existing is not None and existing.expires_at <= now:
        repository.delete(session, existing)
        existing = None
    if existing is not None:
        _answer_with(existing, request_hash)
    row = IdempotencyKey(
        project_id=project_id,
        key=key,
        request_hash=request_hash,
        method=method,
        path=path[:500],
        created_at=now,
        expires_at=now + timedelta(hours=ttl_hours),
    )
    postgres = session.get_bind().dialect.name == "postgresql"
    try:
        if postgres:
            session.execute(text(f"SET LOCAL lock_timeout = '{IN_PROGRESS_WAIT_MS}ms'"))
        repository.add(session, row)
        if postgres:
            session.execute(text("SET LOCAL lock_timeout TO DEFAULT"))
    except IntegrityError:
        # Another request with this key committed between our read and our insert.
        session.rollback()
        winner = repository.get(session, project_id=project_id, key=key)
        if winner is not None:
            _answer_with(winner, request_hash)
        raise _in_progress(key) from None
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
            raise _in_progress(key) from None
        raise
    return row


def record_response(
    *, session: Session, row: IdempotencyKey, status: int, content_type: str, body: bytes
) -> None:
    row.response_status = status
    row.response_content_type = content_type
    row.response_body = body
    session.flush()


def _answer_with(row: IdempotencyKey, request_hash: str) -> None:
    if row.request_hash != request_hash:
        msg = "was already used with another request (method, path or body differ)"
        raise IdempotencyKeyReused(
            f"{HEADER} {row.key!r} {msg}; send a new key for a new request",
            errors=[{"loc": _HEADER_LOC, "msg": msg}],
        )
    if row.response_status is None:
        raise _in_progress(row.key)
    raise IdempotentReplay(row)


def _in_progress(key: str) -> IdempotencyKeyInProgress:
    msg = "a request with this key is still in progress; retry later"
    return IdempotencyKeyInProgress(
        f"{HEADER} {key!r}: {msg}", errors=[{"loc": _HEADER_LOC, "msg": msg}]
    )
