"""Webhooks on SQLite and PostgreSQL: endpoints (secret once, project scope, allow-list at
creation), the outbox written in the transaction of the status change, and delivery to a real
HTTP receiver on loopback: Standard Webhooks signatures checked by the independent
``standardwebhooks`` package and by hand, retries with backoff, give-up, ordering, and targets
refused again at delivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from models import Job, WebhookDelivery, new_id
from models.session import session_scope
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def loopback_allowed(api, monkeypatch):
    from api.config import get_settings

    monkeypatch.setenv("DISTILL_WEBHOOK_ALLOWED_CIDRS", "127.0.0.1/32")
    monkeypatch.setenv("DISTILL_WEBHOOK_BACKOFF_SECONDS", "0.2")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def project(api):
    made = api.new_project("hooks")
    return {"headers": {"Authorization": made["Authorization"]}, "id": made["project_id"]}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    made = WebhookReceiver()
    yield made
    made.close()


@pytest.fixture
def endpoints(api, project) -> Iterator[list[str]]:
    """Endpoints made by a test are deleted after it, so no other test delivers to them."""
    made: list[str] = []
    yield made
    for endpoint_id in made:
        api.client.delete(f"/v1/webhooks/{endpoint_id}", headers=project["headers"])


def _create(api, project, endpoints, url: str, **body) -> dict:
    response = api.client.post(
        "/v1/webhooks", headers=project["headers"], json={"url": url, **body}
    )
    assert response.status_code == 201, response.text
    endpoints.append(response.json()["id"])
    return response.json()


def _job(api, project_id: str, status: str = "queued") -> str:
    job_id = new_id("job")
    with session_scope(api.database_url) as session:
        session.add(Job(id=job_id, project_id=project_id, kind="distill", status=status,
                        spec={}, queue="cpu"))  # fmt: skip
    return job_id


def _deliver_until(settings, done, timeout: float = 20.0) -> None:
    from workers.webhook_delivery import deliver_due

    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "deliveries did not finish in time"
        deliver_due(settings)
        time.sleep(0.05)


def _deliveries(api, project, endpoint_id: str) -> list[dict]:
    url = f"/v1/webhooks/{endpoint_id}/deliveries"
    response = api.client.get(url, headers=project["headers"])
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_endpoints_crud_secret_once_and_project_scope(api, project, endpoints, loopback_allowed):
    made = _create(api, project, endpoints, "http://127.0.0.1:9/h", event_types=["job.failed"])
    assert made["secret"].startswith("whsec_")
    assert len(base64.b64decode(made["secret"].removeprefix("whsec_"))) == 24
    listed = api.client.get("/v1/webhooks", headers=project["headers"]).json()["items"]
    assert [e["id"] for e in listed] == [made["id"]] and "secret" not in listed[0]
    got = api.client.get(f"/v1/webhooks/{made['id']}", headers=project["headers"]).json()
    assert got["event_types"] == ["job.failed"] and "secret" not in got
    stranger = {"Authorization": api.new_project("stranger")["Authorization"]}
    assert api.client.get(f"/v1/webhooks/{made['id']}", headers=stranger).status_code == 404
    assert api.client.delete(f"/v1/webhooks/{made['id']}", headers=stranger).status_code == 404
    deleted = api.client.delete(f"/v1/webhooks/{made['id']}", headers=project["headers"])
    assert deleted.status_code == 204
    assert (
        api.client.get(f"/v1/webhooks/{made['id']}", headers=project["headers"]).status_code == 404
    )
    body = {"url": "http://127.0.0.1:9/", "event_types": ["job.exploded"]}
    bad = api.client.post("/v1/webhooks", headers=project["headers"], json=body)
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "event_types", 0]


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:8080/h", "loopback"),
        ("http://localhost/h", "loopback"),
        ("http://[::1]/h", "loopback"),
        ("http://10.1.2.3/h", "private"),
        ("http://192.168.0.10/h", "private"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("ftp://93.184.216.34/", "http:// or https://"),
        ("http://user:pw@93.184.216.34/", "credentials"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_internal_targets_are_refused_at_creation(api, project, url, says):
    response = api.client.post("/v1/webhooks", headers=project["headers"], json={"url": url})
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["loc"] == ["body", "url"] and says in error["msg"]


def test_a_public_address_is_accepted(api, project, endpoints):
    _create(api, project, endpoints, "https://93.184.216.34/hooks")


def test_the_outbox_row_shares_the_status_change_transaction(
    api, project, endpoints, loopback_allowed
):
    from api.webhooks.outbox import job_status_changed
    from models.session import session_factory

    hook = _create(api, project, endpoints, "http://127.0.0.1:9/h")
    job_id = _job(api, project["id"], status="running")
    session = session_factory(api.database_url)()
    try:
        session.execute(update(Job).where(Job.id == job_id).values(status="failed"))
        assert job_status_changed(session, job_id) == 1
        session.rollback()  # the change is taken back: so is its announcement
    finally:
        session.close()
    assert _deliveries(api, project, hook["id"]) == []
    cancel = api.client.post(
        f"/v1/jobs/{_job(api, project['id'])}/cancel", headers=project["headers"]
    )
    assert cancel.status_code == 200
    [queued] = _deliveries(api, project, hook["id"])
    assert queued["event_type"] == "job.cancelled" and queued["status"] == "pending"
    assert queued["payload"]["data"]["status"] == "cancelled"


def test_signed_delivery_verified_independently_and_by_hand(
    api, project, endpoints, receiver, loopback_allowed
):
    hook = _create(api, project, endpoints, receiver.url)
    job_id = _job(api, project["id"])
    api.client.post(f"/v1/jobs/{job_id}/cancel", headers=project["headers"])
    _deliver_until(loopback_allowed, lambda: len(receiver.delivered) == 1)
    got = receiver.delivered[0]
    payload = Webhook(hook["secret"]).verify(got.body, got.headers)  # raises if forged
    assert payload["type"] == "job.cancelled" and payload["data"]["id"] == job_id
    # By hand: v1,base64(HMAC-SHA256(base64-decoded secret, "id.timestamp.body")).
    key = base64.b64decode(hook["secret"].removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert got.headers["webhook-signature"] == expected
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(WebhookVerificationError):
        Webhook(hook["secret"]).verify(got.body + b" ", got.headers)
    [delivery] = _deliveries(api, project, hook["id"])
    assert delivery["status"] == "delivered" and delivery["message_id"] == got.headers["webhook-id"]
    assert [(a["attempt"], a["status_code"], a["error"]) for a in delivery["log"]] == [
        (1, 204, None)
    ]
    assert delivery["log"][0]["duration_ms"] > 0


def test_retries_back_off_keep_the_id_and_keep_order(api, project, endpoints, loopback_allowed):
    receiver = WebhookReceiver(fail_first=2)
    try:
        hook = _create(api, project, endpoints, receiver.url)
        job_id = _job(api, project["id"], status="running")
        api.client.post(f"/v1/jobs/{job_id}/cancel", headers=project["headers"])  # cancelling
        with session_scope(api.database_url) as session:  # the worker then ends it
            from api.webhooks.outbox import job_status_changed

            session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
            job_status_changed(session, job_id)
        _deliver_until(loopback_allowed, lambda: len(receiver.delivered) == 2)
    finally:
        receiver.close()
    types = [json.loads(r.body)["type"] for r in receiver.received]
    assert types == ["job.cancelling"] * 3 + ["job.cancelled"]  # the second waited its turn
    first_ids = {r.headers["webhook-id"] for r in receiver.received[:3]}
    assert len(first_ids) == 1  # the same message id on every retry
    for r in receiver.received:
        Webhook(hook["secret"]).verify(r.body, r.headers)
    at = [r.at for r in receiver.received[:3]]
    gaps = [at[1] - at[0], at[2] - at[1]]
    assert gaps[0] >= 0.2 * 0.9 and gaps[1] >= 0.4 * 0.9  # base, then doubled
    deliveries = _deliveries(api, project, hook["id"])  # newest first
    assert [d["status"] for d in deliveries] == ["delivered", "delivered"]
    assert [a["status_code"] for a in deliveries[1]["log"]] == [500, 500, 204]


def test_gives_up_after_max_attempts(api, project, endpoints, loopback_allowed):
    receiver = WebhookReceiver(fail_first=100, fail_status=503)
    settings = loopback_allowed.model_copy(update={"webhook_max_attempts": 2})
    try:
        hook = _create(api, project, endpoints, receiver.url)
        api.client.post(f"/v1/jobs/{_job(api, project['id'])}/cancel", headers=project["headers"])
        _deliver_until(
            settings, lambda: _deliveries(api, project, hook["id"])[0]["status"] != "pending"
        )
    finally:
        receiver.close()
    [delivery] = _deliveries(api, project, hook["id"])
    assert delivery["status"] == "failed" and delivery["attempts"] == 2
    assert [a["status_code"] for a in delivery["log"]] == [503, 503]
    assert delivery["log"][0]["error"] == "Service Unavailable"  # empty body: the reason
    assert len(receiver.received) == 2


def test_targets_are_checked_again_at_delivery(api, project, endpoints, receiver, loopback_allowed):
    hook = _create(api, project, endpoints, receiver.url)
    api.client.post(f"/v1/jobs/{_job(api, project['id'])}/cancel", headers=project["headers"])
    no_longer_allowed = loopback_allowed.model_copy(update={"webhook_allowed_cidrs": ""})
    _deliver_until(
        no_longer_allowed, lambda: _deliveries(api, project, hook["id"])[0]["status"] != "pending"
    )
    [delivery] = _deliveries(api, project, hook["id"])
    assert delivery["status"] == "failed"  # refused targets are not retried
    assert "refused" in delivery["log"][0]["error"] and "loopback" in delivery["log"][0]["error"]
    assert delivery["log"][0]["status_code"] is None
    assert receiver.received == []  # nothing was sent


def test_a_host_name_allowed_explicitly(api, project, endpoints, receiver, monkeypatch):
    from api.config import get_settings

    monkeypatch.setenv("DISTILL_WEBHOOK_ALLOWED_HOSTS", "localhost")
    get_settings.cache_clear()
    try:
        port = receiver.server.server_address[1]
        hook = _create(api, project, endpoints, f"http://localhost:{port}/h")
        api.client.post(f"/v1/jobs/{_job(api, project['id'])}/cancel", headers=project["headers"])
        _deliver_until(get_settings(), lambda: len(receiver.delivered) == 1)
        assert receiver.delivered[0].headers["host"] == f"localhost:{port}"
        Webhook(hook["secret"]).verify(receiver.delivered[0].body, receiver.delivered[0].headers)
    finally:
        get_settings.cache_clear()


def test_deleting_an_endpoint_drops_its_pending_deliveries(api, project, loopback_allowed):
    made = api.client.post("/v1/webhooks", headers=project["headers"],
                           json={"url": "http://127.0.0.1:9/h"}).json()  # fmt: skip
    api.client.post(f"/v1/jobs/{_job(api, project['id'])}/cancel", headers=project["headers"])
    api.client.delete(f"/v1/webhooks/{made['id']}", headers=project["headers"])
    with session_scope(api.database_url) as session:
        left = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == made["id"])
        ).all()
    assert left == []
