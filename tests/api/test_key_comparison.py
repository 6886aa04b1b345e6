"""API keys: looked up by their sha256 (the secret itself is never stored or queried) and the
stored hash compared with ``hmac.compare_digest``, in constant time. The comparison is watched
on the real request path (the real function runs; the test only records its arguments)."""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import select

from api import deps as auth_dependency
from models import ApiKey
from models.session import session_scope


def test_the_key_is_checked_by_hash_in_constant_time(api, monkeypatch):
    made = api.new_project("timing")
    secret = made["Authorization"].removeprefix("Bearer ")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    compared: list[tuple[str, str]] = []
    real_compare = hmac.compare_digest

    def recording_compare(a, b):
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(auth_dependency.hmac, "compare_digest", recording_compare)
    ok = api.client.get("/v1/jobs", headers={"Authorization": made["Authorization"]})
    assert ok.status_code == 200
    assert compared == [(digest, digest)], "the stored hash is compared in constant time"

    wrong = secret[:-1] + ("a" if secret[-1] != "a" else "b")  # one character off
    refused = api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}"})
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"

    with session_scope(api.database_url) as session:
        stored = list(session.scalars(select(ApiKey.key_hash)))
    assert digest in stored and secret not in stored
