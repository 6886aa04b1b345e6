"""Many simultaneous requests against the real API process (uvicorn + PostgreSQL): every one is
answered. Unbounded, 200 of them deadlocked the API for good (threads waiting for connections
held by requests waiting for threads; see api/concurrency.py). No timing is asserted: only that
each request gets its answer within a generous client timeout."""

from __future__ import annotations

import asyncio

import httpx

CLIENTS = 200


async def _hammer(url: str, headers: dict[str, str]) -> list[int | str]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=180) as http:  # fmt: skip

        async def one(i: int) -> int | str:
            try:
                return (await http.get("/v1/jobs" if i % 2 else "/v1/projects/me")).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        return await asyncio.gather(*(one(i) for i in range(CLIENTS)))


def test_two_hundred_simultaneous_requests_are_all_answered(real_stack):
    stack, api, _ = real_stack
    statuses = asyncio.run(_hammer(stack.url, dict(api.http.headers)))
    assert statuses == [200] * CLIENTS
    assert api.call("GET", "/v1/projects/me")["id"]  # and the API still answers afterwards
