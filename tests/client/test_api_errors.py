"""problem+json answers become DistillAPIError with readable field locations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from client import commands
from client.cli import main
from client.errors import DistillAPIError
from client.sdk import DistillClient

# -- problem+json errors ---------------------------------------------------------------------

VALIDATION_PROBLEM = {
    "type": "https://distill.dev/problems/validation",
    "title": "Invalid job spec",
    "status": 422,
    "detail": "2 fields are invalid",
    "errors": [
        {"loc": ["body", "training", "lr"], "msg": "must be greater than 0"},
        {"loc": ["dataset", "train", 3], "msg": "line 4: missing 'prompt'"},
    ],
}


def _client_answering(status: int, **response: Any) -> DistillClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, **response))
    return DistillClient("http://api.test", "k", transport=transport)


def test_problem_json_becomes_a_typed_error_naming_each_field() -> None:
    headers = {"content-type": "application/problem+json"}
    with _client_answering(422, json=VALIDATION_PROBLEM, headers=headers) as client:
        with pytest.raises(DistillAPIError) as error_info:
            client.create_job({"kind": "distill"})
    error = error_info.value
    assert (error.status, error.title, error.detail) == (
        422,
        "Invalid job spec",
        "2 fields are invalid",
    )
    assert error.errors == VALIDATION_PROBLEM["errors"]
    assert error.body == VALIDATION_PROBLEM
    assert str(error) == (
        "422 Invalid job spec: 2 fields are invalid\n"
        "  - body.training.lr: must be greater than 0\n"
        "  - dataset.train[3]: line 4: missing 'prompt'"
    )


def test_fastapi_default_validation_body_is_read_as_field_errors() -> None:
    body = {"detail": [{"loc": ["query", "limit"], "msg": "Input should be a valid integer"}]}
    with _client_answering(422, json=body) as client, pytest.raises(DistillAPIError) as info:
        client.get_job("job_1")
    assert info.value.detail is None
    assert str(info.value) == (
        "422 Unprocessable Entity\n  - query.limit: Input should be a valid integer"
    )


def test_a_non_json_error_body_keeps_its_text() -> None:
    with (
        _client_answering(502, text="upstream down") as client,
        pytest.raises(DistillAPIError) as info,
    ):
        client.health()
    assert (info.value.status, info.value.detail) == (502, "upstream down")
    assert str(info.value) == "502 Bad Gateway: upstream down"


def test_streamed_download_errors_are_decoded_too(tmp_path: Path) -> None:
    problem = {"title": "Not Found", "status": 404, "detail": "model mdl_x does not exist"}
    with _client_answering(404, json=problem) as client, pytest.raises(DistillAPIError) as info:
        client.download_model("mdl_x", tmp_path / "out")
    assert str(info.value) == "404 Not Found: model mdl_x does not exist"
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_problem_to_stderr_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = {"content-type": "application/problem+json"}
    monkeypatch.setattr(
        commands,
        "open_client",
        lambda args: _client_answering(422, json=VALIDATION_PROBLEM, headers=headers),
    )
    assert main(["jobs", "get", "job_1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2 fields are invalid" in captured.err
    assert "body.training.lr: must be greater than 0" in captured.err
    assert "dataset.train[3]: line 4: missing 'prompt'" in captured.err
