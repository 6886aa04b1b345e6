"""Fault tests inject a fault into real processes (workers, API, Redis, PostgreSQL, a
filesystem) and check that nothing is lost and nothing is done twice."""

from __future__ import annotations

from tests.support.stack_fixtures import (
    embedded_stack,
    pytest_runtest_makereport,
    real_stack,
    stack_logs,
)

__all__ = ["embedded_stack", "pytest_runtest_makereport", "real_stack", "stack_logs"]
