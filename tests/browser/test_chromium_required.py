"""Without Chromium the browser tests skip with the install hint, but never under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.stack import ROOT


def _run_without_chromium(ci: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(DISTILL_CHROMIUM="/nonexistent/chromium", CI=ci)
    test = "tests/browser/test_dashboard.py::test_sign_in_refuses_a_wrong_key_then_signs_in_and_out"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsfE", "-q", test]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_a_missing_chromium_skips_outside_ci_and_fails_under_ci(ci: str, outcome: str) -> None:
    run = _run_without_chromium(ci)
    assert outcome in run.stdout, run.stdout + run.stderr
    assert "apt-get install chromium" in run.stdout
    assert run.returncode == (1 if ci else 0)
