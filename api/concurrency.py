"""Bounds how many requests are inside the application at once.

Sync routes and dependencies run in anyio's thread pool, one hop per dependency: a request takes
its database connection in one thread (authentication) and then waits, holding it, for another
thread to run the route. Unbounded, 200 simultaneous requests deadlocked the API (found by
``bench/api_latency.py``): every thread waited for a connection while every connection was held
by a request waiting for a thread. With at most ``MAX_CONCURRENT_REQUESTS`` requests inside —
fewer than the pool has connections (``models.session``) — a waiting thread always gets one.
The rest wait here, on the event loop, holding nothing. Job streams are long-lived and take a
connection only for each short poll, so they are not counted."""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from models.session import API_THREADS, POOL_OVERFLOW, POOL_SIZE

MAX_CONCURRENT_REQUESTS = API_THREADS - 8
assert MAX_CONCURRENT_REQUESTS < POOL_SIZE + POOL_OVERFLOW - 8


class ConcurrencyLimit:
    def __init__(self, app: ASGIApp, *, limit: int = MAX_CONCURRENT_REQUESTS) -> None:
        self.app = app
        self.limit = limit
        self._slots: anyio.Semaphore | None = None  # made in the running event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/stream"):
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = anyio.Semaphore(self.limit)
        async with self._slots:
            await self.app(scope, receive, send)
