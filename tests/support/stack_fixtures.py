"""Fixtures that start real service stacks. Imported by the conftest of each folder that runs
real processes (``tests/e2e``, ``tests/faults``) so both use one definition."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api_client import Api, credentials
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack import Stack, stack_env


@pytest.fixture
def stack_logs(request: pytest.FixtureRequest) -> Iterator[list[Stack]]:
    """Stops every stack a test started, and prints its logs when the test failed."""
    stacks: list[Stack] = []
    yield stacks
    failed = getattr(request.node, "rep_call", None)
    for stack in stacks:
        if failed is not None and failed.failed:
            print(stack.logs())
        stack.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def embedded_stack(tmp_path: Path, model_root: Path, stack_logs: list[Stack]) -> tuple[Stack, Api]:
    """`distill serve` (the embedded default) in its own DISTILL_HOME, and a client for it."""
    home = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env=stack_env(home, model_root), log_dir=logs)
    stack_logs.append(stack)
    stack.start_serve()
    return stack, Api(stack.url, credentials(home))


def start_real_stack(
    tmp_path: Path,
    model_root: Path,
    stack_logs: list[Stack],
    *,
    database_url: str,
    broker_url: str,
    **env: str,
) -> tuple[Stack, Api]:
    """Migrate ``database_url``, make a project, start the uvicorn API (workers are the test's
    to start). ``env`` overrides settings (``DISTILL_LEASE_SECONDS=...``) for every process."""
    from api.config import Settings
    from api.migrate import upgrade
    from api.projects.admin import create_project_cli

    full_env = stack_env(
        tmp_path / "home", model_root, DATABASE_URL=database_url, BROKER_URL=broker_url, **env
    )
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    stack = Stack(env=full_env, log_dir=logs)
    stack_logs.append(stack)
    upgrade(database_url)
    made = create_project_cli("e2e", Settings(DATABASE_URL=database_url))
    stack.start_api()
    return stack, Api(stack.url, made["api_key"])


@pytest.fixture
def real_stack(
    tmp_path: Path, model_root: Path, stack_logs: list[Stack]
) -> Iterator[tuple[Stack, Api, str]]:
    """PostgreSQL and Redis on 127.0.0.1 (a fresh database and Redis db), the uvicorn API."""
    require_real_stack()
    with fresh_postgres_database() as database_url:
        broker_url = fresh_redis_url()
        stack, api = start_real_stack(
            tmp_path, model_root, stack_logs, database_url=database_url, broker_url=broker_url
        )
        yield stack, api, broker_url
        stack.stop()
