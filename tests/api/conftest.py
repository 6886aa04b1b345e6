"""In-process API tests against both databases: SQLite (the embedded default) and the real
PostgreSQL. One database per backend per session; each test works in a project of its own, and
every query is project-scoped, so tests share no state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from tests.support.servers import fresh_postgres_database, require_real_stack


@dataclass
class ApiHarness:
    client: TestClient
    database_url: str

    def new_project(self, name: str = "test") -> dict[str, str]:
        from api.config import get_settings
        from api.projects.admin import create_project_cli

        made = create_project_cli(name, get_settings())
        return {"Authorization": f"Bearer {made['api_key']}", "project_id": made["project_id"]}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    require_real_stack()
    with fresh_postgres_database() as url:
        yield url


def _harness(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHarness]:
    from api.config import get_settings
    from api.migrate import upgrade

    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    upgrade(database_url)
    from api.app import create_app

    with TestClient(create_app()) as client:
        yield ApiHarness(client=client, database_url=database_url)
    get_settings.cache_clear()


@pytest.fixture(params=["sqlite", "postgres"])
def api(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, test_base
) -> Iterator[ApiHarness]:
    if request.param == "sqlite":
        url = f"sqlite:///{test_base / 'api-tests.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    yield from _harness(url, monkeypatch)


@pytest.fixture
def auth(api: ApiHarness) -> dict[str, str]:
    headers = api.new_project()
    headers.pop("project_id")
    return headers
