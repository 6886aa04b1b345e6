"""Resolution order of the server URL and API key: argument, environment, file, default."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from client.credentials import DEFAULT_URL, resolve_credentials, save_credentials
from client.errors import CredentialsError
from client.sdk import DistillClient

# -- credentials -----------------------------------------------------------------------------


def _write_credentials(home: Path, **values: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "credentials.json").write_text(json.dumps(values))


def test_credentials_default_to_local_url_and_no_key() -> None:
    credentials = resolve_credentials()
    assert (credentials.url, credentials.api_key, credentials.project_id) == (
        DEFAULT_URL,
        None,
        None,
    )


def test_credentials_file_is_used_when_nothing_else_is_set(isolated_environment: Path) -> None:
    _write_credentials(isolated_environment, url="http://file:1/", api_key="k-file", project_id="p")
    credentials = resolve_credentials()
    assert (credentials.url, credentials.api_key, credentials.project_id) == (
        "http://file:1",
        "k-file",
        "p",
    )


def test_environment_overrides_the_credentials_file(
    isolated_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_credentials(isolated_environment, url="http://file:1", api_key="k-file")
    monkeypatch.setenv("DISTILL_URL", "http://env:2")
    credentials = resolve_credentials()
    assert (credentials.url, credentials.api_key) == ("http://env:2", "k-file")
    monkeypatch.setenv("DISTILL_API_KEY", "k-env")
    assert resolve_credentials().api_key == "k-env"


def test_explicit_arguments_override_environment_and_file(
    isolated_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_credentials(isolated_environment, url="http://file:1", api_key="k-file")
    monkeypatch.setenv("DISTILL_URL", "http://env:2")
    monkeypatch.setenv("DISTILL_API_KEY", "k-env")
    credentials = resolve_credentials("http://arg:3", "k-arg")
    assert (credentials.url, credentials.api_key) == ("http://arg:3", "k-arg")
    client = DistillClient("http://arg:3", "k-arg")
    with client:
        assert client.base_url == "http://arg:3"
        assert client._http.headers["Authorization"] == "Bearer k-arg"


def test_a_broken_credentials_file_is_reported_only_when_needed(
    isolated_environment: Path,
) -> None:
    isolated_environment.mkdir(parents=True)
    (isolated_environment / "credentials.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="credentials.json"):
        resolve_credentials()
    assert resolve_credentials("http://arg:3", "k-arg").api_key == "k-arg"


def test_save_credentials_round_trips_through_resolution() -> None:
    path = save_credentials("http://saved:4", "k-saved", "prj_9")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = resolve_credentials()
    assert (credentials.url, credentials.api_key, credentials.project_id) == (
        "http://saved:4",
        "k-saved",
        "prj_9",
    )
