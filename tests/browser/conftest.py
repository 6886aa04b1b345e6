"""Browser tests: Debian's Chromium driven by Playwright against a real `distill serve`.

Chromium is the system package (`apt-get install chromium`), never a Playwright browser
download. Without it the tests skip with that hint, except under ``CI=true``, where they fail.
Screenshots go to ``$DISTILL_TEST_ARTIFACTS`` (default ``.artifacts/browser``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import ROOT, Stack, stack_env, wait_until

CHROMIUM = Path(os.environ.get("DISTILL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TERMINAL = ("succeeded", "failed", "cancelled")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: browser tests never skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'")
    return CHROMIUM


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("DISTILL_TEST_ARTIFACTS", ROOT / ".artifacts" / "browser"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class Api:
    """The REST API as the tests' own independent client (setup and checks, not the UI)."""

    def __init__(self, url: str, key: str) -> None:
        self.key = key
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == expect, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/jobs/{job_id}")

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float) -> dict:
        return wait_until(
            lambda: (j := self.job(job_id))["status"] in statuses and j,
            timeout=timeout,
            what=f"job {job_id} to reach {statuses}",
        )

    def create_job(self, spec: dict[str, Any]) -> str:
        return self.call("POST", "/v1/jobs", 201, json=spec)["id"]


@dataclass
class Served:
    url: str
    api: Api
    teacher_id: str
    dataset_id: str
    dataset_name: str
    stack: Stack

    def spec(self, *, name: str, loss: str = "fkl", **training: Any) -> dict[str, Any]:
        return {
            "kind": "distill",
            "name": name,
            "teacher": {"model": self.teacher_id},
            "student": {"model": {"init": {"from_teacher_layers": "every_2nd"}}},
            "dataset": {"train": self.dataset_id},
            "method": {"loss": loss, "params": {"temperature": 1.0}},
            "training": {"max_steps": 20, "batch_size": 4, "lr": 1e-3, "max_length": 48,
                         "checkpoint_every": 10, **training},
            "evaluation": {"max_examples": 4, "max_new_tokens": 4},
        }  # fmt: skip


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_root: Path, tiny_teacher: Path, chromium: Path
) -> Iterator[Served]:
    """One `distill serve` (SQLite, serverless broker, one worker) per module, with a teacher
    registered and a dataset uploaded."""
    from ml.data.instructions import generate_instruction_records, write_jsonl

    base = tmp_path_factory.mktemp("dashboard")
    home, logs = base / "home", base / "logs"
    logs.mkdir()
    stack = Stack(env=stack_env(home, model_root), log_dir=logs)
    try:
        stack.start_serve()
        key = json.loads((home / "credentials.json").read_text())["api_key"]
        api = Api(stack.url, key)
        data = base / "browser-train.jsonl"
        write_jsonl(generate_instruction_records(200, seed=3), data)
        with data.open("rb") as fh:
            dataset = api.call("POST", "/v1/datasets", 201, files={"file": (data.name, fh)})
        teacher = api.call("POST", "/v1/models", 201, json={"path": str(tiny_teacher),
                                                            "name": "tiny-teacher"})  # fmt: skip
        yield Served(stack.url, api, teacher["id"], dataset["id"], dataset["name"], stack)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser_context(chromium: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    user_data = Path(tempfile.mkdtemp(prefix="distill-chromium-"))
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data),
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(user_data, ignore_errors=True)


@dataclass
class Browser:
    """A fresh tab, with every uncaught script error and CSP violation collected."""

    page: Any
    served: Served
    artifacts: Path
    errors: list[str]

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.served.url}/ui/{fragment}")

    def sign_in(self, key: str | None = None) -> None:
        self.open()
        self.page.fill("#api-key", key or self.served.api.key)
        self.page.click("#sign-in")
        self.page.wait_for_selector("#project-name")

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def browser(
    request: pytest.FixtureRequest, browser_context: Any, served: Served, artifacts: Path
) -> Iterator[Browser]:
    page = browser_context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

    def on_console(message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            errors.append(f"console: {message.text}")

    page.on("console", on_console)
    # window.confirm() of the cancel button: accepted, as a person clicking OK.
    page.on("dialog", lambda dialog: dialog.accept())
    browser = Browser(page, served, artifacts, errors)
    yield browser
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:
        browser.screenshot(f"FAILED-{request.node.name}")
        print(served.stack.logs())  # the service's side of the failure
    page.close()
    assert not errors, errors
