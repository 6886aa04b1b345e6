"""DISTILL_LOG_FORMAT=json: one JSON object per record, with job_id / project_id from the
context a worker binds while it runs a job, or from a /v1/jobs/{id} request path. A real
worker's log lines are checked in tests/e2e/test_heartbeat_metrics.py."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.logging_setup import (
    JobPathLogContext,
    JsonFormatter,
    bind_project,
    configure_api_logging,
    in_job_log_context,
    job_log_context,
)


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose records go, as JSON, into a string buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.structured_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_records_carry_the_bound_job_and_lose_it_after(json_lines):
    logger, buffer = json_lines
    logger.info("before")
    with job_log_context(job_id="job_0001"):
        logger.warning("claimed %s", "job_0001")
        bind_project("prj_42")
        logger.info("running", extra={"step": 3})
    logger.error("after")

    before, claimed, running, after = lines(buffer)
    assert set(before) == {"ts", "level", "logger", "message"}
    assert before["logger"] == "tests.structured_logs" and before["level"] == "INFO"
    assert before["ts"].endswith("Z") and "T" in before["ts"]
    assert claimed["message"] == "claimed job_0001" and claimed["level"] == "WARNING"
    assert claimed["job_id"] == "job_0001" and "project_id" not in claimed
    assert running["job_id"] == "job_0001" and running["project_id"] == "prj_42"
    assert running["step"] == 3
    assert "job_id" not in after and "project_id" not in after


def test_a_decorated_job_function_logs_with_its_job_id(json_lines):
    logger, buffer = json_lines

    @in_job_log_context
    def run(settings: object, job_id: str, worker_id: str) -> None:
        bind_project("prj_7")
        logger.info("working")

    run(None, "job_positional", "w1")
    run(None, job_id="job_keyword", worker_id="w1")
    logger.info("idle")
    first, second, idle = lines(buffer)
    assert (first["job_id"], first["project_id"]) == ("job_positional", "prj_7")
    assert (second["job_id"], second["project_id"]) == ("job_keyword", "prj_7")
    assert "job_id" not in idle and "project_id" not in idle


def test_exception_and_unserialisable_extra(json_lines):
    logger, buffer = json_lines
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"path": object()})
    (record,) = lines(buffer)
    assert record["level"] == "ERROR"
    assert "ValueError: boom" in record["exc_info"]
    assert record["path"].startswith("<object object")


def test_job_routes_log_with_the_job_id_of_their_path(json_lines):
    logger, buffer = json_lines
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}/events")
    def events(job_id: str) -> dict[str, str]:  # sync: runs on a thread, as the real routes
        logger.info("reading events")
        return {"job_id": job_id}

    @app.get("/v1/datasets")
    def datasets() -> list[str]:
        logger.info("listing datasets")
        return []

    app.add_middleware(JobPathLogContext)
    with TestClient(app) as client:
        assert client.get("/v1/jobs/job_0193abc/events").status_code == 200
        assert client.get("/v1/datasets").status_code == 200
    job_line, other_line = lines(buffer)
    assert job_line["job_id"] == "job_0193abc"
    assert "job_id" not in other_line


def test_json_format_configures_the_root_logger_once():
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_api_logging("text")
        assert root.handlers == saved_handlers  # text leaves logging as it was
        configure_api_logging("json")
        configure_api_logging("json")  # create_app runs once per test client
        ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
        assert len(ours) == 1
        assert root.level <= logging.INFO
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def test_log_format_setting_refuses_other_values(monkeypatch):
    from pydantic import ValidationError

    from api.config import Settings

    monkeypatch.setenv("DISTILL_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings()
    monkeypatch.setenv("DISTILL_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
