"""The API killed in the middle of an upload leaves no half dataset; the retried upload works."""

from __future__ import annotations

import socket
import time

from tests.support.api_client import Api
from tests.support.stack import Stack, stack_env, wait_until


def _start_partial_upload(port: int, key: str, first_bytes: bytes, total: int) -> socket.socket:
    boundary = "----distilltest"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    request = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + total + 64}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request + head + first_bytes)
    return sock


def test_api_killed_mid_upload_leaves_nothing_and_retry_succeeds(
    tmp_path, model_root, jsonl_file, stack_logs
):
    from api.config import Settings
    from api.migrate import upgrade
    from api.projects.admin import create_project_cli

    home = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env=stack_env(home, model_root), log_dir=logs)
    stack_logs.append(stack)
    settings = Settings(home=home)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    key = create_project_cli("crash", settings)["api_key"]
    stack.start_api()
    payload = jsonl_file.read_bytes()
    sock = _start_partial_upload(stack.port, key, payload[: len(payload) // 2], len(payload))
    time.sleep(1.0)  # the API is now holding half a file
    stack.kill("api")
    sock.close()

    data_root = home / "data"
    assert not list(data_root.rglob("*.jsonl")), "a half upload became visible as a dataset"
    assert not list(data_root.rglob("*.part"))
    stack.start_api()
    api = Api(stack.url, key)
    assert api.call("GET", "/v1/datasets")["items"] == []
    dataset = api.upload_dataset(jsonl_file)
    assert api.call("GET", f"/v1/datasets/{dataset}")["rows"] == 400
    wait_until(lambda: len(list(data_root.rglob("*.jsonl"))) == 1, timeout=5, what="one file")
