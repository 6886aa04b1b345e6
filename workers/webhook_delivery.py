"""Delivers the webhook outbox (``webhook_deliveries``): signed POSTs with retries and
exponential backoff, every attempt logged in ``webhook_attempts``.

Every worker runs a ``WebhookDeliverer`` thread beside the sweeper. A row is claimed with one
guarded UPDATE (``locked_until``), so several deliverers never send it at the same time. Rows
of one endpoint go out in order: while an endpoint's oldest pending row waits for its retry,
the rows behind it wait too. The target is checked against the allow-list after DNS resolution
on every attempt, and the request goes to the address that was checked.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update

from api.config import Settings
from api.idempotency.repository import purge_expired
from api.webhooks.signing import signed_headers
from api.webhooks.targets import AllowList, Target, TargetRefused, resolve_target
from models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from models.session import rows_updated, session_scope

log = logging.getLogger(__name__)
BATCH = 100
USER_AGENT = "distill-webhooks/1"
ERROR_CHARS = 500


@dataclass
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: float
    permanent: bool = False  # refused target: retrying cannot help

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Delay before attempt ``attempts + 1``: base * 2^(attempts - 1), capped, +-10% jitter."""
    delay = min(
        settings.webhook_backoff_seconds * 2 ** max(attempts - 1, 0),
        settings.webhook_backoff_max_seconds,
    )
    return float(delay * random.uniform(0.9, 1.1))


def deliver_due(settings: Settings, *, http: httpx.Client | None = None) -> int:
    """One pass over the outbox; returns how many attempts it made."""
    own_client = http is None
    client = http or httpx.Client(timeout=settings.webhook_timeout_seconds)
    try:
        made = 0
        blocked: set[str] = set()
        for delivery_id, endpoint_id, due in _pending(settings):
            if endpoint_id in blocked:
                continue
            if not due or not _claim(settings, delivery_id):
                blocked.add(endpoint_id)  # keep this endpoint's later rows behind it
                continue
            if not _attempt(settings, client, delivery_id):
                blocked.add(endpoint_id)
            made += 1
        return made
    finally:
        if own_client:
            client.close()


def _pending(settings: Settings) -> list[tuple[int, str, bool]]:
    now = utcnow()
    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.endpoint_id,
                   WebhookDelivery.next_attempt_at, WebhookDelivery.locked_until)
            .where(WebhookDelivery.status == "pending")
            .order_by(WebhookDelivery.id)
            .limit(BATCH)
        ).all()  # fmt: skip
    return [
        (row.id, row.endpoint_id, row.next_attempt_at <= now and _unlocked(row.locked_until, now))
        for row in rows
    ]


def _unlocked(locked_until: datetime | None, now: datetime) -> bool:
    return locked_until is None or locked_until < now


def _claim(settings: Settings, delivery_id: int) -> bool:
    now = utcnow()
    hold = timedelta(seconds=settings.webhook_timeout_seconds * 3 + 30)
    with session_scope(settings.resolved_database_url) as session:
        return (
            rows_updated(
                session,
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
                .where(
                    or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now)
                )
                .values(locked_until=now + hold)
                .execution_options(synchronize_session=False),
            )  # fmt: skip
            == 1
        )


def _attempt(settings: Settings, client: httpx.Client, delivery_id: int) -> bool:
    """Send one claimed delivery and record the outcome; True when it was delivered."""
    with session_scope(settings.resolved_database_url) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id) if delivery else None
        if delivery is None or endpoint is None:
            return True  # the endpoint was deleted meanwhile: nothing to hold back
        url, secret = endpoint.url, endpoint.secret
        message_id, payload = delivery.message_id, delivery.payload
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    outcome = send(settings, client, url, secret, message_id, body)
    _record(settings, delivery_id, outcome)
    return outcome.ok


def send(
    settings: Settings, client: httpx.Client, url: str, secret: str, message_id: str, body: bytes
) -> Outcome:
    started = time.perf_counter()

    def elapsed() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        target = resolve_target(url, AllowList.from_settings(settings))
    except TargetRefused as exc:
        return Outcome(None, f"refused: {exc}", elapsed(), permanent=True)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signed_headers(secret, message_id, int(time.time()), body),
    }
    pinned_url, extensions = _pinned(url, target)
    headers["host"] = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
    try:
        request = client.build_request(
            "POST", pinned_url, content=body, headers=headers, extensions=extensions
        )
        response = client.send(request, stream=True)
        try:  # read only the start of the answer: a receiver cannot make us buffer a flood
            head = b""
            for chunk in response.iter_bytes():
                head += chunk
                if len(head) >= ERROR_CHARS:
                    break
        finally:
            response.close()
    except httpx.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS], elapsed())
    text = head[:ERROR_CHARS].decode("utf-8", errors="replace")
    error = None if response.is_success else (text or response.reason_phrase)
    return Outcome(response.status_code, error, elapsed())


def _pinned(url: str, target: Target) -> tuple[str, dict[str, Any]]:
    """The URL with its host replaced by the checked address (TLS still verifies the name)."""
    pinned = httpx.URL(url).copy_with(host=str(target.addresses[0]))
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    return str(pinned), extensions


def _record(settings: Settings, delivery_id: int, outcome: Outcome) -> None:
    now = utcnow()
    with session_scope(settings.resolved_database_url) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return
        delivery.attempts += 1
        session.add(
            WebhookAttempt(delivery_id=delivery_id, attempt=delivery.attempts,
                           status_code=outcome.status_code, error=outcome.error,
                           duration_ms=round(outcome.duration_ms, 3), created_at=now)
        )  # fmt: skip
        delivery.locked_until = None
        if outcome.ok:
            delivery.status, delivery.finished_at = "delivered", now
        elif outcome.permanent or delivery.attempts >= settings.webhook_max_attempts:
            delivery.status, delivery.finished_at = "failed", now
        else:
            wait = backoff_seconds(settings, delivery.attempts)
            delivery.next_attempt_at = now + timedelta(seconds=wait)


class WebhookDeliverer(threading.Thread):
    """Every worker runs one; also drops expired Idempotency-Key rows now and then."""

    PURGE_EVERY_SECONDS = 300.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="webhook-deliverer", daemon=True)
        self.settings = settings
        self._stop_event = threading.Event()
        self._last_purge = 0.0

    def run(self) -> None:
        with httpx.Client(timeout=self.settings.webhook_timeout_seconds) as client:
            while not self._stop_event.wait(self.settings.webhook_poll_seconds):
                try:
                    deliver_due(self.settings, http=client)
                    self._purge()
                except Exception:
                    log.exception("webhook delivery pass failed")

    def _purge(self) -> None:
        if time.monotonic() - self._last_purge < self.PURGE_EVERY_SECONDS:
            return
        self._last_purge = time.monotonic()
        with session_scope(self.settings.resolved_database_url) as session:
            purge_expired(session, now=utcnow())

    def stop(self) -> None:
        self._stop_event.set()
