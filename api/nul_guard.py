"""Refuses a NUL character in the path or the query string before any route runs.

PostgreSQL text cannot hold NUL, so an id like ``/v1/jobs/%00`` reached the database as a query
parameter and failed there with a 500 (SQLite accepted it; schemathesis found it on PostgreSQL).
No id, cursor or filter of ours can contain one, so the request is a 422 naming where it was."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import PROBLEM_JSON


class RejectNulCharacters:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            loc = _nul_location(scope)
            if loc is not None:
                await _refuse(send, loc)
                return
        await self.app(scope, receive, send)


def _nul_location(scope: Scope) -> list[str] | None:
    if "\x00" in scope.get("path", ""):
        return ["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return ["query", name.replace("\x00", "")]
    return None


async def _refuse(send: Send, loc: list[str]) -> None:
    msg = "must not contain a NUL character"
    body = {
        "type": "about:blank",
        "title": "Invalid input",
        "status": 422,
        "detail": f"{'.'.join(loc)}: {msg}",
        "errors": [{"loc": loc, "msg": msg}],
    }
    raw = json.dumps(body).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(raw)).encode()),
    ]
    await send({"type": "http.response.start", "status": 422, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
