"""A real S3-compatible server on loopback for storage tests: moto's server mode (its HTTP API,
spoken to over TCP by s3fs/aiobotocore exactly as to S3), one process per test session, and a
fresh bucket per test. Worker and API processes that tests start reach it through
``S3Bucket.env()``."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Any values: moto checks that requests are signed, not by whom. Never real credentials.
ACCESS_KEY, SECRET_KEY, REGION = "test-access-key", "test-secret-key-do-not-log", "us-east-1"


@dataclass(frozen=True)
class S3Bucket:
    endpoint: str
    bucket: str
    prefix: str = "distill"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def env(self) -> dict[str, str]:
        """The settings that point a service process at this bucket."""
        return {
            "DISTILL_STORAGE_URL": self.url,
            "DISTILL_S3_ENDPOINT_URL": self.endpoint,
            "DISTILL_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "DISTILL_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "DISTILL_S3_REGION": REGION,
            "DISTILL_STORAGE_CHUNK_BYTES": str(5 * 1024 * 1024),
        }

    def fs(self) -> Any:
        """An s3fs client of its own (no listings cache): the test's view of the bucket."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY, secret=SECRET_KEY, use_listings_cache=False, skip_instance_cache=True,
            client_kwargs={"endpoint_url": self.endpoint, "region_name": REGION},
        )  # fmt: skip

    def keys(self) -> list[str]:
        """Every object key under the prefix, relative to it, sorted."""
        root = f"{self.bucket}/{self.prefix}/"
        return sorted(p.removeprefix(root) for p in self.fs().find(root))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m moto.server`` in a process of its own: the test process's memory (measured
    with tracemalloc) then holds the client's buffers only, never the server's copy."""
    from tests.support.stack import free_port, wait_until

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto.server exited with {proc.returncode}; see {log.name}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(listening, timeout=60, what="moto.server", poll=0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> S3Bucket:
    bucket = S3Bucket(s3_endpoint, f"distill-{uuid.uuid4().hex[:12]}")
    import boto3  # comes with moto; s3fs's mkdir sends a location constraint us-east-1 refuses

    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name=REGION,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )  # fmt: skip
    client.create_bucket(Bucket=bucket.bucket)
    return bucket
