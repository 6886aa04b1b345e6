"""The real PostgreSQL and Redis on 127.0.0.1: fresh databases per test session, and a rule that
under CI=true a missing server fails the run instead of skipping it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_real_stack() -> None:
    """Skip locally when a server is down; fail under CI, where .ci/run must have started them."""
    missing = [
        name
        for name, port in (("PostgreSQL", 5432), ("Redis", REDIS_PORT))
        if not _port_open("127.0.0.1", port)
    ]
    if not missing:
        return
    message = f"{' and '.join(missing)} not reachable on 127.0.0.1"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: real-stack tests never skip)")
    pytest.skip(message)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a new, empty database; drops it afterwards."""
    import psycopg

    name = f"distill_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        from models.session import engine_for

        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        engine_for(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_redis_url() -> str:
    """A Redis database number unlikely to be in use by another test session, flushed."""
    import redis

    db = 1 + uuid.uuid4().int % 14
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    client.close()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
