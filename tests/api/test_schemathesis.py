"""Schemathesis against the app's own OpenAPI document, called in process (ASGI) with a real key
of a fresh project on SQLite: no operation answers 5xx, and every answer has a status code, a
content type and a body that the document declares. Bounded (examples per operation, deadline)
and derandomized, so it runs in a few minutes on two cores and fails the same way twice.

Operations are excluded only with a reason written next to them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# (method, path) pairs left out, each with the reason.
EXCLUDED: dict[tuple[str, str], str] = {}


def _load_schema() -> Any:
    """The app's document, fetched in process. Building the app reads only size limits from
    the settings; the database is chosen per request, by ``fuzz_auth`` below."""
    from api.app import create_app
    from api.config import get_settings

    loaded = schemathesis.openapi.from_asgi("/v1/openapi.json", create_app())
    get_settings.cache_clear()  # collection must not pin settings for the tests that follow
    for method, path in EXCLUDED:
        loaded = loaded.exclude(method=method, path=path)
    return loaded


schema = _load_schema()


@pytest.fixture(params=["sqlite", "postgres"])
def fuzz_auth(
    request: pytest.FixtureRequest, test_base, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """A database of this run's own (SQLite, and PostgreSQL, where text cannot hold NUL), and
    the auth header of a fresh project in it."""
    from api.config import get_settings
    from api.migrate import upgrade
    from api.projects.admin import create_project_cli

    if request.param == "sqlite":
        url = f"sqlite:///{test_base / 'schemathesis.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    upgrade(url)
    made = create_project_cli("schemathesis", get_settings())
    yield {"Authorization": f"Bearer {made['api_key']}"}
    get_settings.cache_clear()


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,  # shared CI cores: a slow answer is not a failure here, a wrong one is
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case, fuzz_auth):
    response = case.call_and_validate(headers=fuzz_auth, checks=CHECKS)
    assert response.status_code != 401, "the fuzzer must get past authentication"


@pytest.mark.parametrize(
    "path, loc",
    [
        ("/v1/jobs/%00", ["path"]),
        ("/v1/fine_tuning/jobs/x%00y", ["path"]),
        ("/v1/datasets?cursor=%00", ["query", "cursor"]),
        ("/v1/files?after=a%00", ["query", "after"]),
    ],
)
def test_a_nul_character_is_a_422_not_a_500(api, auth, path, loc):
    """Found by this fuzzer on PostgreSQL: a NUL in an id reached the database and failed
    there (500). Now refused before any route, naming where it was."""
    response = api.client.get(path, headers=auth)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [{"loc": loc, "msg": "must not contain a NUL character"}]
