"""The API with shared storage configured (a real moto S3 server on loopback), on SQLite and
PostgreSQL: an uploaded dataset and an uploaded model archive land in the bucket under the
prefix; a rejected upload puts nothing there; an unreachable store is a 503 problem that
records no row and shows no credential."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
from pathlib import Path

import pytest

from tests.support import moto_server
from tests.support.moto_server import SECRET_KEY, S3Bucket

# The moto server and bucket fixtures (tests/support/moto_server.py), used by name below.
s3_endpoint, s3_bucket = moto_server.s3_endpoint, moto_server.s3_bucket


@pytest.fixture
def s3_env(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """Storage settings for the in-process API; listed before ``api``, which reads them."""
    for name, value in s3_bucket.env().items():
        monkeypatch.setenv(name, value)
    return s3_bucket


def _upload(api, auth, path: Path):
    with path.open("rb") as fh:
        return api.client.post("/v1/datasets", headers=auth, files={"file": (path.name, fh)})


def test_an_uploaded_dataset_lands_in_the_bucket(s3_env, api, auth, jsonl_file, tmp_path):
    response = _upload(api, auth, jsonl_file)
    assert response.status_code == 201, response.text
    sha = response.json()["sha256"]
    assert sha == hashlib.sha256(jsonl_file.read_bytes()).hexdigest()
    key = f"data/{sha[:2]}/{sha}.jsonl"
    assert key in s3_env.keys()
    assert s3_env.fs().cat(f"{s3_env.bucket}/{s3_env.prefix}/{key}") == jsonl_file.read_bytes()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n')
    before = s3_env.keys()
    rejected = _upload(api, auth, bad)
    assert rejected.status_code == 422
    assert rejected.json()["errors"][0]["loc"][:2] == ["file", "line 1"]
    assert s3_env.keys() == before


def test_an_uploaded_model_archive_lands_in_the_bucket(s3_env, api, auth, tiny_teacher):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        archive.add(tiny_teacher, arcname="teacher")
    response = api.client.post(
        "/v1/models/upload", headers=auth, files={"file": ("t.tar.gz", buf.getvalue())}
    )
    assert response.status_code == 201, response.text
    model_id = response.json()["id"]
    keys = [k for k in s3_env.keys() if k.startswith(f"artifacts/models/{model_id}/")]
    local = sorted(p.relative_to(tiny_teacher).as_posix() for p in tiny_teacher.rglob("*")
                   if p.is_file())  # fmt: skip
    assert keys == [f"artifacts/models/{model_id}/teacher/{name}" for name in local]


def test_an_unreachable_store_is_a_503_and_records_nothing(
    s3_bucket, monkeypatch, api, auth, jsonl_file
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    dead = S3Bucket(f"http://127.0.0.1:{closed}", s3_bucket.bucket)
    for name, value in dead.env().items():
        monkeypatch.setenv(name, value)
    from api.config import get_settings

    get_settings.cache_clear()  # the API process's settings now name the dead endpoint
    response = _upload(api, auth, jsonl_file)
    get_settings.cache_clear()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["title"] == "Storage unavailable"
    assert SECRET_KEY not in response.text
    assert api.client.get("/v1/datasets", headers=auth).json()["items"] == []


def test_another_api_host_fetches_a_dataset_it_lacks_for_a_dry_run(
    s3_env, api, auth, jsonl_file, tiny_teacher
):
    from api.config import get_settings

    dataset = _upload(api, auth, jsonl_file).json()
    local = get_settings().resolved_data_root / dataset["sha256"][:2] / f"{dataset['sha256']}.jsonl"
    local.unlink()  # this host never saw the upload (another API replica took it)
    teacher = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)})
    spec = {
        "kind": "distill", "dry_run": True,
        "teacher": {"model": teacher.json()["id"]},
        "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
        "dataset": {"train": dataset["id"]}, "method": {"loss": "fkl"},
    }  # fmt: skip
    response = api.client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 200, response.text
    assert local.read_bytes() == jsonl_file.read_bytes()


@pytest.mark.parametrize("url", ["bucket/prefix", "s3://", "s3://bucket/../other"])
def test_a_malformed_storage_url_is_refused(url):
    from pydantic import ValidationError

    from api.config import Settings

    with pytest.raises(ValidationError, match="s3://bucket/prefix"):
        Settings(storage_url=url)
