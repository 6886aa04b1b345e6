"""Reading ``GET /v1/jobs/{id}/stream`` (Server-Sent Events) with httpx: the wire format
parsed line by line, and a follower that reconnects with ``Last-Event-ID`` after a dropped
connection, so a caller sees every event and metric once, in order, until ``end``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

MAX_RECONNECTS = 20


@dataclass(frozen=True)
class StreamMessage:
    event: str  # status | event | metric | end
    data: dict[str, Any]
    id: str | None


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None, int | None]]:
    """(event, data, id, retry) per message; comment lines (keep-alives) are skipped."""
    event, data, message_id, retry = "message", [], None, None
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data), message_id, retry
            elif retry is not None:
                yield "", "", None, retry
            event, data, message_id, retry = "message", [], None, None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            message_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)


def follow_stream(
    http: httpx.Client, job_id: str, last_event_id: str | None = None
) -> Iterator[StreamMessage]:
    from client.sdk import raise_for_problem

    reconnects, retry_ms = 0, 2000
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            with http.stream("GET", f"/v1/jobs/{job_id}/stream", headers=headers) as response:
                if response.is_error:
                    response.read()
                    raise_for_problem(response)
                for event, data, message_id, retry in parse_sse(response.iter_lines()):
                    if retry is not None:
                        retry_ms = retry
                    if not event:
                        continue
                    if message_id is not None:
                        last_event_id = message_id
                    reconnects = 0
                    yield StreamMessage(event, json.loads(data), message_id)
                    if event == "end":
                        return
        except httpx.TransportError:
            pass
        reconnects += 1  # the server closed or the network dropped before "end"
        if reconnects > MAX_RECONNECTS:
            raise ConnectionError(f"the stream of {job_id} kept dropping; gave up")
        time.sleep(retry_ms / 1000)
