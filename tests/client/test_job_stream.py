"""The client's SSE reader: the wire format, and a dropped connection resumed with the last
id received (the server side of resuming is tested for real in tests/api/test_job_stream.py)."""

from __future__ import annotations

import httpx

from client.job_stream import parse_sse
from client.sdk import DistillClient


def test_parse_sse_skips_comments_and_joins_data_lines():
    wire = ["retry: 500", "", ": keep-alive", "", "event: event", "id: 3-0",
            'data: {"a":', "data: 1}", "", "event: end", "data: {}", ""]  # fmt: skip
    assert list(parse_sse(wire)) == [
        ("", "", None, 500),
        ("event", '{"a":\n1}', "3-0", None),
        ("end", "{}", None, None),
    ]


def test_a_dropped_stream_resumes_after_the_last_id():
    seen_headers: list[str | None] = []
    bodies = [
        b"retry: 0\n\n"  # reconnect at once
        b'event: status\ndata: {"status": "running"}\n\n'
        b'event: metric\nid: 0-7\ndata: {"key": "train/loss", "step": 1, "value": 2.0}\n\n',
        b'event: status\ndata: {"status": "succeeded"}\n\n'
        b'event: metric\nid: 0-8\ndata: {"key": "train/loss", "step": 2, "value": 1.0}\n\n'
        b'event: end\nid: 0-8\ndata: {"status": "succeeded"}\n\n',
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen_headers.append(request.headers.get("last-event-id"))
        body = bodies[len(seen_headers) - 1]  # the first response ends without "end"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = DistillClient("http://test", "key", transport=httpx.MockTransport(handler))
    messages = list(client.stream_job("job_1"))
    assert seen_headers == [None, "0-7"]
    assert [m.event for m in messages] == ["status", "metric", "status", "metric", "end"]
    assert [m.data["step"] for m in messages if m.event == "metric"] == [1, 2]
