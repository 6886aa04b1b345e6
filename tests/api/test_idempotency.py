"""Idempotency-Key on creating POSTs, on SQLite and PostgreSQL: replay, reuse, scope, expiry,
uploads, and (PostgreSQL) a key held by an in-flight transaction and truly concurrent retries."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from models import IdempotencyKey, Job, utcnow
from models.session import session_scope

KEY = "Idempotency-Key"


@pytest.fixture
def refs(api, auth, tiny_teacher, jsonl_file):
    with jsonl_file.open("rb") as fh:
        ds = api.client.post("/v1/datasets", headers=auth, files={"file": ("t.jsonl", fh)}).json()
    model = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)}).json()
    return {"dataset": ds["id"], "teacher": model["id"]}


def _spec(refs, name="tiny"):
    return {
        "kind": "distill",
        "name": name,
        "teacher": {"model": refs["teacher"]},
        "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
        "dataset": {"train": refs["dataset"]},
        "method": {"loss": "fkl"},
        "training": {"max_steps": 5, "batch_size": 4},
    }


def _job_count(api, project_id: str) -> int:
    with session_scope(api.database_url) as session:
        return session.scalar(
            select(func.count()).select_from(Job).where(Job.project_id == project_id)
        )


def _project_of(api, auth) -> str:
    return api.client.get("/v1/projects/me", headers=auth).json()["id"]


def test_same_key_same_body_replays_the_first_response(api, auth, refs):
    headers = {**auth, KEY: "run-42"}
    first = api.client.post("/v1/jobs", headers=headers, json=_spec(refs))
    second = api.client.post("/v1/jobs", headers=headers, json=_spec(refs))
    assert first.status_code == second.status_code == 201, first.text
    assert second.content == first.content  # byte for byte
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["content-type"] == first.headers["content-type"]
    assert _job_count(api, _project_of(api, auth)) == 1


def test_same_key_other_body_is_refused_naming_the_header(api, auth, refs):
    headers = {**auth, KEY: "run-43"}
    assert api.client.post("/v1/jobs", headers=headers, json=_spec(refs)).status_code == 201
    other = api.client.post("/v1/jobs", headers=headers, json=_spec(refs, name="other"))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["errors"][0]["loc"] == ["header", KEY]
    # Same body on another path is another request too.
    elsewhere = api.client.post("/v1/api-keys", headers=headers, json={"name": "x"})
    assert elsewhere.status_code == 422
    assert _job_count(api, _project_of(api, auth)) == 1


def test_keys_are_scoped_per_project(api, auth, refs):
    headers = {**auth, KEY: "shared-key"}
    assert api.client.post("/v1/jobs", headers=headers, json=_spec(refs)).status_code == 201
    other = api.new_project("other")
    other_headers = {"Authorization": other["Authorization"], KEY: "shared-key"}
    made = api.client.post("/v1/api-keys", headers=other_headers, json={"name": "ci"})
    assert made.status_code == 201 and "idempotent-replayed" not in made.headers


def test_a_failed_request_stores_no_key(api, auth, refs):
    headers = {**auth, KEY: "retry-after-fix"}
    bad = {**_spec(refs), "method": {"loss": "nope"}}
    assert api.client.post("/v1/jobs", headers=headers, json=bad).status_code == 422
    fixed = api.client.post("/v1/jobs", headers=headers, json=_spec(refs))
    assert fixed.status_code == 201 and "idempotent-replayed" not in fixed.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "bad\tkey"])
def test_invalid_keys_are_refused(api, auth, key):
    headers = {**auth, KEY: key}
    response = api.client.post("/v1/api-keys", headers=headers, json={"name": "x"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["header", KEY]


def test_an_expired_key_creates_again(api, auth):
    headers = {**auth, KEY: "old-key"}
    first = api.client.post("/v1/api-keys", headers=headers, json={"name": "x"}).json()
    project_id = _project_of(api, auth)
    with session_scope(api.database_url) as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == "old-key")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    again = api.client.post("/v1/api-keys", headers=headers, json={"name": "x"})
    assert again.status_code == 201 and "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first["id"]


def test_uploads_hash_the_streamed_content_and_fields(api, auth, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    headers = {**auth, KEY: "upload-1"}

    def upload(content: bytes, name: str = "d"):
        files = {"file": ("d.jsonl", content)}
        return api.client.post("/v1/datasets", headers=headers, files=files, data={"name": name})

    first = upload(data.read_bytes())
    again = upload(data.read_bytes())
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    changed = upload(b'{"prompt": "a", "response": "c"}\n')
    assert changed.status_code == 422 and changed.json()["errors"][0]["loc"] == ["header", KEY]
    renamed = upload(data.read_bytes(), name="e")
    assert renamed.status_code == 422
    listed = api.client.get("/v1/datasets", headers=auth).json()["items"]
    assert [d["id"] for d in listed] == [first.json()["id"]]


@pytest.mark.realstack
def test_postgres_key_held_by_an_open_transaction_is_in_progress(api, auth):
    if not api.database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers: the second request waits and then replays")
    project_id = _project_of(api, auth)
    from models.session import session_factory

    holder = session_factory(api.database_url)()
    try:  # a first request that inserted its key and has not committed yet
        holder.add(
            IdempotencyKey(project_id=project_id, key="held", request_hash="0" * 64,
                           method="POST", path="/v1/api-keys",
                           expires_at=utcnow() + timedelta(hours=1))
        )  # fmt: skip
        holder.flush()
        blocked = api.client.post("/v1/api-keys", headers={**auth, KEY: "held"}, json={"name": "x"})
        assert blocked.status_code == 409, blocked.text
        assert blocked.json()["errors"][0]["loc"] == ["header", KEY]
        assert "in progress" in blocked.json()["detail"]
    finally:
        holder.rollback()
        holder.close()
    after = api.client.post("/v1/api-keys", headers={**auth, KEY: "held"}, json={"name": "x"})
    assert after.status_code == 201


@pytest.mark.realstack
def test_postgres_concurrent_retries_create_one_job(api, auth, refs):
    if not api.database_url.startswith("postgresql"):
        pytest.skip("the truly concurrent case is PostgreSQL's")
    headers = {**auth, KEY: "burst"}
    spec = _spec(refs)
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    results: list = [None] * threads_n

    def send(i: int) -> None:
        barrier.wait()
        results[i] = api.client.post("/v1/jobs", headers=headers, json=spec)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {201, 409}, [r.text for r in results]
    created = [r for r in results if r.status_code == 201]
    assert created, statuses
    assert len({r.content for r in created}) == 1  # every 201 is the same job
    fresh = [r for r in created if "idempotent-replayed" not in r.headers]
    assert len(fresh) <= 1
    assert _job_count(api, _project_of(api, auth)) == 1
    # Once the first committed, a retry is a replay.
    replay = api.client.post("/v1/jobs", headers=headers, json=spec)
    assert replay.status_code == 201 and replay.content == created[0].content


def test_expired_keys_are_purged_and_live_ones_kept(api, auth):
    from api.idempotency.repository import purge_expired

    for key in ("stale", "fresh"):
        headers = {**auth, KEY: key}
        assert (
            api.client.post("/v1/api-keys", headers=headers, json={"name": key}).status_code == 201
        )
    project_id = _project_of(api, auth)
    with session_scope(api.database_url) as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == "stale")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with session_scope(api.database_url) as session:
        assert purge_expired(session, now=utcnow()) >= 1
    with session_scope(api.database_url) as session:
        left = session.scalars(
            select(IdempotencyKey.key).where(IdempotencyKey.project_id == project_id)
        ).all()
    assert left == ["fresh"]
