"""Where the SDK finds its server URL and API key.

Each value resolves on its own, first match wins: an explicit argument, then the environment
(``DISTILL_URL``, ``DISTILL_API_KEY``), then ``$DISTILL_HOME/credentials.json`` (``DISTILL_HOME``
defaults to ``./.distill``) holding ``{"url", "api_key", "project_id"}``, then the default URL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import CredentialsError

DEFAULT_URL = "http://127.0.0.1:8000"
CREDENTIALS_FILENAME = "credentials.json"


@dataclass(frozen=True)
class Credentials:
    url: str
    api_key: str | None
    project_id: str | None


def distill_home() -> Path:
    return Path(os.environ.get("DISTILL_HOME", ".distill"))


def credentials_path() -> Path:
    return distill_home() / CREDENTIALS_FILENAME


def read_credentials_file(path: Path | None = None) -> dict[str, Any]:
    """The stored credentials, or ``{}`` when there is no file."""
    path = path or credentials_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        stored = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(stored, dict):
        raise CredentialsError(f"{path} must hold a JSON object")
    return stored


def resolve_credentials(url: str | None = None, api_key: str | None = None) -> Credentials:
    # The file is read only when some value is still missing, so a broken file never
    # gets in the way of explicit arguments or environment variables.
    resolved_url = url or os.environ.get("DISTILL_URL") or None
    resolved_key = api_key or os.environ.get("DISTILL_API_KEY") or None
    stored: dict[str, Any] = {}
    if resolved_url is None or resolved_key is None:
        stored = read_credentials_file()
    return Credentials(
        url=(resolved_url or stored.get("url") or DEFAULT_URL).rstrip("/"),
        api_key=resolved_key or stored.get("api_key") or None,
        project_id=stored.get("project_id"),
    )


def save_credentials(url: str, api_key: str, project_id: str | None = None) -> Path:
    """Write the credentials file readable by its owner only; returns its path."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"url": url, "api_key": api_key, "project_id": project_id}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.chmod(path, 0o600)
    return path
