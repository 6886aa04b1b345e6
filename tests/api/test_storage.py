"""The artifact store (api/storage.py) against a real S3-compatible server on loopback (moto's
server mode): streamed transfers with memory well below the file's size, multipart uploads,
sha256 checks that catch a corrupted object, keys confined under the prefix, paths recorded by
another host translated to this host's cache, and the local disk left exactly as before."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from api.config import Settings
from api.storage import ArtifactCorrupt, ArtifactStore, StorageUnavailable, confine_key, open_store
from ml.distillation.checkpointing import directory_sha256
from tests.support import moto_server
from tests.support.moto_server import SECRET_KEY, S3Bucket

# The moto server and bucket fixtures (tests/support/moto_server.py), used by name below.
s3_endpoint, s3_bucket = moto_server.s3_endpoint, moto_server.s3_bucket

CHUNK = 5 * 1024 * 1024


def host(tmp_path: Path, name: str, bucket: S3Bucket | None, **extra: object) -> ArtifactStore:
    """A store as one host sees it: its own data and artifact roots (its cache)."""
    env = bucket.env() if bucket else {}
    settings = Settings(
        home=tmp_path / name,
        storage_url=env.get("DISTILL_STORAGE_URL", ""),
        s3_endpoint_url=env.get("DISTILL_S3_ENDPOINT_URL", ""),
        s3_access_key_id=env.get("DISTILL_S3_ACCESS_KEY_ID"),
        s3_secret_access_key=env.get("DISTILL_S3_SECRET_ACCESS_KEY"),
        s3_region=env.get("DISTILL_S3_REGION", ""),
        storage_chunk_bytes=CHUNK,
        **extra,
    )
    return open_store(settings)


def write_random(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for _ in range(size // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def test_a_large_file_streams_up_and_down_with_memory_well_below_its_size(tmp_path, s3_bucket):
    size = 80 * 1024 * 1024  # sixteen 5 MiB parts
    api_host, worker_host = host(tmp_path, "api", s3_bucket), host(tmp_path, "worker", s3_bucket)
    warm = api_host.roots["data"] / "00" / "warm-up.jsonl"  # the client's one-off setup first
    write_random(warm, 1 << 20)
    api_host.upload_file(warm)
    local = api_host.roots["data"] / "ab" / ("ab" + "0" * 62 + ".jsonl")
    sha = write_random(local, size)

    tracemalloc.start()
    try:
        api_host.upload_file(local)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fetched = worker_host.ensure_file(worker_host.localize(str(local)), sha)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(f"upload peak {upload_peak / 2**20:.1f} MiB, download peak "
          f"{download_peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file")  # fmt: skip
    # A few chunks in flight (the buffer, the part, the HTTP body), never the file.
    assert upload_peak < 5 * CHUNK and download_peak < 5 * CHUNK
    info = s3_bucket.fs().info(f"{s3_bucket.bucket}/{s3_bucket.prefix}/data/ab/{local.name}")
    assert info["size"] == size
    assert info["ETag"].strip('"').endswith("-16")  # a multipart upload of sixteen parts
    assert fetched == worker_host.roots["data"] / "ab" / local.name
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == sha
    assert not [p for p in fetched.parent.iterdir() if p.name.endswith(".part")]


def test_a_directory_round_trips_and_a_rewrite_replaces_its_objects(tmp_path, s3_bucket):
    writer, reader = host(tmp_path, "a", s3_bucket), host(tmp_path, "b", s3_bucket)
    ckpt = writer.roots["artifacts"] / "jobs" / "job_0abc" / "checkpoints" / "step_00000003"
    (ckpt / "nested").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights" * 1000)
    (ckpt / "nested" / "state.json").write_text('{"step": 3}')
    (ckpt / "stale.bin").write_bytes(b"old")
    writer.upload_dir(ckpt)
    (ckpt / "stale.bin").unlink()
    writer.upload_dir(ckpt)  # saved again at the same step: the old object goes
    sha = directory_sha256(ckpt)[0]

    assert s3_bucket.keys() == [
        "artifacts/jobs/job_0abc/checkpoints/step_00000003/model.safetensors",
        "artifacts/jobs/job_0abc/checkpoints/step_00000003/nested/state.json",
    ]
    here = reader.localize(str(ckpt))
    assert here == reader.roots["artifacts"] / "jobs/job_0abc/checkpoints/step_00000003"
    assert reader.ensure_dir(here, sha) == here
    assert directory_sha256(here)[0] == sha

    writer.remove_dir(ckpt)
    assert s3_bucket.keys() == []


def test_a_corrupted_object_fails_its_sha256_and_leaves_no_cache_entry(tmp_path, s3_bucket):
    writer, reader = host(tmp_path, "a", s3_bucket), host(tmp_path, "b", s3_bucket)
    dataset = writer.roots["data"] / "cd" / ("cd" + "1" * 62 + ".jsonl")
    dataset.parent.mkdir(parents=True)
    dataset.write_bytes(b'{"prompt": "a", "response": "b"}\n')
    sha = hashlib.sha256(dataset.read_bytes()).hexdigest()
    writer.upload_file(dataset)
    model = writer.roots["artifacts"] / "models" / "mdl_0def"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    model_sha = directory_sha256(model)[0]
    writer.upload_dir(model)

    fs, root = s3_bucket.fs(), f"{s3_bucket.bucket}/{s3_bucket.prefix}"
    fs.pipe(f"{root}/data/cd/{dataset.name}", b'{"prompt": "a", "response": "X"}\n')
    fs.pipe(f"{root}/artifacts/models/mdl_0def/config.json", b'{"tampered": 1}')

    local = reader.localize(str(dataset))
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        reader.ensure_file(local, sha)
    assert not local.parent.exists() or list(local.parent.iterdir()) == []
    local_model = reader.localize(str(model))
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        reader.ensure_dir(local_model, model_sha)
    assert not local_model.exists() and list(local_model.parent.iterdir()) == []


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "data/../../x", "data//x", "data/./x", "a\\b", "data/x/.."]
)
def test_keys_are_confined_under_the_prefix(key):
    with pytest.raises(ValueError):
        confine_key(key)


def test_paths_outside_the_roots_have_no_key_and_stay_as_recorded(tmp_path, s3_bucket):
    store = host(tmp_path, "w", s3_bucket)
    with pytest.raises(ValueError, match="neither"):
        store.key_for(tmp_path / "elsewhere" / "file")
    with pytest.raises(ValueError, match="names no root"):
        store.local_for("secrets/key")
    with pytest.raises(ValueError):
        store.local_for("data/../../etc/passwd")
    model_root_dir = "/srv/models/tiny-teacher"  # the operator's, same path on every host
    assert store.localize(model_root_dir) == Path(model_root_dir)
    dotted = "/other/../host/models/mdl_0abc"
    assert store.localize(dotted) == Path(dotted)


def test_paths_recorded_by_another_host_map_to_this_hosts_cache(tmp_path, s3_bucket):
    store = host(tmp_path, "w", s3_bucket)
    data, artifacts = store.roots["data"], store.roots["artifacts"]
    sha = "ef" + "2" * 62
    cases = {
        f"/api-host/home/data/ef/{sha}.jsonl": data / "ef" / f"{sha}.jsonl",
        "/api/artifacts/jobs/job_0a1/checkpoints/step_00000009": artifacts
        / "jobs/job_0a1/checkpoints/step_00000009",
        "/x/artifacts/models/mdl_0b2": artifacts / "models/mdl_0b2",
        "/x/artifacts/models/mdl_0b2/inner-folder": artifacts / "models/mdl_0b2/inner-folder",
        "/x/artifacts/teacher/logits/00ff": artifacts / "teacher/logits/00ff",
    }
    for recorded, expected in cases.items():
        assert store.localize(recorded) == expected
        assert store.local_for(store.key_for(expected)) == expected


def test_the_local_disk_is_the_store_when_no_url_is_set(tmp_path):
    store = host(tmp_path, "solo", None)
    assert not store.is_remote
    missing = tmp_path / "solo" / "data" / "ab" / "missing.jsonl"
    store.upload_file(missing)  # nothing to copy: no error even for a missing file
    assert store.ensure_file(missing, "0" * 64) == missing and not missing.exists()
    assert store.localize("/api/artifacts/models/mdl_0b2") == Path("/api/artifacts/models/mdl_0b2")


def test_an_unreachable_store_is_a_503_problem_that_never_shows_the_secret(tmp_path, s3_bucket):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    dead = S3Bucket(f"http://127.0.0.1:{closed}", s3_bucket.bucket)
    store = host(tmp_path, "w", dead)
    local = store.roots["data"] / "ab" / "f.jsonl"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"{}\n")
    with pytest.raises(StorageUnavailable) as raised:
        store.upload_file(local)
    assert raised.value.status == 503
    assert SECRET_KEY not in str(raised.value) and SECRET_KEY not in repr(store.remote)
