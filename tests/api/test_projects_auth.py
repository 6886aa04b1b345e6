from __future__ import annotations

from sqlalchemy import select

from models import ApiKey
from models.session import session_scope


def test_missing_and_wrong_keys_are_401_problem_json(api, auth):
    for headers in ({}, {"Authorization": "Bearer dsk_wrong"}, {"Authorization": "Basic x"}):
        response = api.client.get("/v1/projects/me", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
    assert api.client.get("/v1/projects/me", headers=auth).status_code == 200


def test_keys_are_stored_hashed_and_shown_once(api, auth):
    created = api.client.post("/v1/api-keys", json={"name": "ci"}, headers=auth)
    assert created.status_code == 201
    secret = created.json()["key"]
    with session_scope(api.database_url) as session:
        hashes = list(session.scalars(select(ApiKey.key_hash)))
    assert secret not in hashes and all(len(h) == 64 for h in hashes)
    listed = api.client.get("/v1/api-keys", headers=auth).json()
    assert all("key" not in row for row in listed)
    new_auth = {"Authorization": f"Bearer {secret}"}
    assert api.client.get("/v1/projects/me", headers=new_auth).status_code == 200
    revoked = api.client.delete(f"/v1/api-keys/{created.json()['id']}", headers=auth)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert api.client.get("/v1/projects/me", headers=new_auth).status_code == 401


def test_openapi_document_is_served(api):
    doc = api.client.get("/v1/openapi.json").json()
    assert "/v1/jobs" in doc["paths"] and "/v1/datasets" in doc["paths"]
    assert "application/problem+json" in str(doc["paths"]["/v1/jobs/{job_id}/cancel"])
