"""The API must never have every worker thread waiting for a database connection while the
requests holding the connections wait for a thread (found by bench/api_latency.py: 200 clients
hung the API). The invariant: fewer requests let in at once than pooled connections, on both
databases (tests/faults/test_api_overload.py shows it end to end)."""

from __future__ import annotations

import anyio
from fastapi.testclient import TestClient

from api.concurrency import MAX_CONCURRENT_REQUESTS
from models.session import API_THREADS, make_engine


def test_pool_holds_more_connections_than_requests_let_in(tmp_path):
    for url in (f"sqlite:///{tmp_path / 'p.db'}", "postgresql+psycopg://postgres@127.0.0.1/x"):
        pool = make_engine(url).pool
        capacity = pool.size() + pool._max_overflow  # type: ignore[attr-defined]
        assert capacity > MAX_CONCURRENT_REQUESTS


def test_the_app_limits_its_threads_to_the_invariant(api):
    assert API_THREADS != 40  # anyio's default: the probe must tell them apart
    seen: list[float] = []

    @api.client.app.get("/v1/_threads_probe")
    async def probe() -> dict[str, float]:
        seen.append(anyio.to_thread.current_default_thread_limiter().total_tokens)
        return {}

    assert isinstance(api.client, TestClient)
    api.client.get("/v1/_threads_probe")
    assert seen == [API_THREADS]
