"""End-to-end fixtures: defined once in ``tests/support`` and shared with ``tests/faults``.
The names stay importable from here (``from tests.e2e.conftest import distill_spec``)."""

from __future__ import annotations

from tests.support.api_client import TERMINAL, Api, credentials, distill_spec
from tests.support.stack_fixtures import (
    embedded_stack,
    pytest_runtest_makereport,
    real_stack,
    stack_logs,
)

__all__ = [
    "TERMINAL",
    "Api",
    "credentials",
    "distill_spec",
    "embedded_stack",
    "pytest_runtest_makereport",
    "real_stack",
    "stack_logs",
]
