"""The `distill` command line: parsing, lazy server commands, spec files, output."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from client import commands
from client.cli import build_parser, main
from client.rendering import format_result_table

# -- argument parsing ------------------------------------------------------------------------

PARSE_CASES: list[tuple[list[str], Any, dict[str, Any]]] = [
    (["health"], commands.cmd_health, {}),
    (["whoami"], commands.cmd_whoami, {}),
    (
        ["datasets", "upload", "t.jsonl", "--name", "t"],
        commands.cmd_datasets_upload,
        {"file": "t.jsonl", "name": "t"},
    ),
    (["datasets", "list"], commands.cmd_datasets_list, {}),
    (["datasets", "get", "ds_1"], commands.cmd_datasets_get, {"id": "ds_1"}),
    (
        ["models", "register", "/models/tiny", "--name", "tiny"],
        commands.cmd_models_register,
        {"path": "/models/tiny", "name": "tiny"},
    ),
    (
        ["models", "upload", "out/tiny"],
        commands.cmd_models_upload,
        {"dir": "out/tiny", "name": None},
    ),
    (["models", "list"], commands.cmd_models_list, {}),
    (["models", "get", "mdl_1"], commands.cmd_models_get, {"id": "mdl_1"}),
    (
        ["models", "download", "mdl_1", "dest"],
        commands.cmd_models_download,
        {"id": "mdl_1", "dest": "dest"},
    ),
    (
        ["jobs", "create", "-f", "spec.yaml"],
        commands.cmd_jobs_create,
        {"file": "spec.yaml", "watch": False, "poll": 1.0},
    ),
    (
        ["jobs", "create", "--file", "s.json", "--watch", "--poll", "0.5"],
        commands.cmd_jobs_create,
        {"file": "s.json", "watch": True, "poll": 0.5},
    ),
    (["jobs", "get", "job_1"], commands.cmd_jobs_get, {"id": "job_1"}),
    (
        ["jobs", "list"],
        commands.cmd_jobs_list,
        {"status": None, "kind": None, "meta": [], "limit": None},
    ),
    (
        [
            "jobs",
            "list",
            "--status",
            "running",
            "--kind",
            "distill",
            "--meta",
            "team=search",
            "--meta",
            "ticket=KD-42",
            "--limit",
            "5",
        ],
        commands.cmd_jobs_list,
        {
            "status": "running",
            "kind": "distill",
            "limit": 5,
            "meta": [("team", "search"), ("ticket", "KD-42")],
        },
    ),
    (["jobs", "watch", "job_1"], commands.cmd_jobs_watch, {"id": "job_1", "poll": 1.0}),
    (["jobs", "cancel", "job_1"], commands.cmd_jobs_cancel, {"id": "job_1"}),
    (
        ["jobs", "events", "job_1", "--after-id", "7"],
        commands.cmd_jobs_events,
        {"id": "job_1", "after_id": "7"},
    ),
    (
        ["jobs", "metrics", "job_1", "--key", "train/loss", "--step-min", "10"],
        commands.cmd_jobs_metrics,
        {"id": "job_1", "key": "train/loss", "step_min": 10, "step_max": None},
    ),
    (["jobs", "checkpoints", "job_1"], commands.cmd_jobs_checkpoints, {"id": "job_1"}),
    (
        ["jobs", "download", "job_1", "out"],
        commands.cmd_jobs_download,
        {"id": "job_1", "dest": "out"},
    ),
    (["serve"], commands.cmd_serve, {"host": "127.0.0.1", "port": 8000, "workers": 1}),
    (
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--workers", "2"],
        commands.cmd_serve,
        {"host": "0.0.0.0", "port": 9000, "workers": 2},
    ),
    (["demo"], commands.cmd_demo, {"teacher_steps": None, "quick": False}),
    (
        ["demo", "--teacher-steps", "300", "--quick"],
        commands.cmd_demo,
        {"teacher_steps": 300, "quick": True},
    ),
    (
        ["admin", "create-project", "search"],
        commands.cmd_admin_create_project,
        {"name": "search", "save": False},
    ),
]


@pytest.mark.parametrize(("argv", "handler", "expected"), PARSE_CASES, ids=lambda v: str(v))
def test_every_subcommand_parses_to_its_handler(
    argv: list[str], handler: Any, expected: dict[str, Any]
) -> None:
    args = build_parser().parse_args(argv)
    assert args.handler is handler
    for name, value in expected.items():
        assert getattr(args, name) == value
    assert (args.url, args.api_key, args.json) == (None, None, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--url", "http://h:1", "--api-key", "k", "jobs", "list"],
        ["jobs", "list", "--json", "--url", "http://h:1", "--api-key", "k"],
        ["--url", "http://h:1", "jobs", "list", "--json", "--api-key", "k"],
    ],
)
def test_global_options_work_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.url, args.api_key, args.json) == ("http://h:1", "k", True)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["jobs"],
        ["jobs", "create"],
        ["jobs", "list", "--meta", "no-equals-sign"],
        ["jobs", "list", "--status", "sleeping"],
        ["models", "download", "mdl_1"],
    ],
)
def test_bad_usage_exits_with_status_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2


# -- server-side commands delegate lazily ------------------------------------------------------


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    for attribute, value in attributes.items():
        setattr(module, attribute, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_serve_delegates_to_client_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    def serve(host: str, port: int, workers: int) -> int:
        calls.append((host, port, workers))
        return 0

    _fake_module(monkeypatch, "client.serve", serve=serve)
    assert main(["serve", "--port", "8123", "--workers", "3"]) == 0
    assert calls == [("127.0.0.1", 8123, 3)]


def test_demo_delegates_to_client_demo_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[Any] = []

    def run_demo(args: Any) -> int:
        received.append(args)
        return 7

    _fake_module(monkeypatch, "client.demo", run_demo=run_demo)
    assert main(["demo", "--teacher-steps", "50", "--quick"]) == 7
    assert (received[0].teacher_steps, received[0].quick) == (50, True)


def test_admin_create_project_prints_id_and_key_and_can_save_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], isolated_environment: Path
) -> None:
    created = {"project_id": "prj_1", "api_key": "dk_secret"}
    _fake_module(monkeypatch, "api.projects", __path__=[])
    _fake_module(monkeypatch, "api.projects.admin", create_project_cli=lambda name: created)
    assert main(["admin", "create-project", "search", "--save", "--url", "http://h:9"]) == 0
    printed = capsys.readouterr().out
    assert "prj_1" in printed and "dk_secret" in printed
    stored_path = isolated_environment / "credentials.json"
    stored = json.loads(stored_path.read_text())
    assert stored == {"url": "http://h:9", "api_key": "dk_secret", "project_id": "prj_1"}
    assert stat.S_IMODE(stored_path.stat().st_mode) == 0o600


def test_client_modules_import_no_server_or_ml_packages() -> None:
    heavy = ("torch", "transformers", "fastapi", "sqlalchemy", "celery")
    probe = (
        "import sys, client.cli, client.sdk, client.job_watch; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"


# -- spec files and result table -------------------------------------------------------------


def test_job_specs_load_from_yaml_and_json(tmp_path: Path) -> None:
    yaml_spec = tmp_path / "spec.yaml"
    yaml_spec.write_text("kind: distill\nmetadata: {team: search}\ntraining: {lr: 2.0e-4}\n")
    json_spec = tmp_path / "spec.json"
    json_spec.write_text(json.dumps({"kind": "edit"}))
    loaded = commands.load_spec(str(yaml_spec))
    assert loaded == {"kind": "distill", "metadata": {"team": "search"}, "training": {"lr": 2e-4}}
    assert commands.load_spec(str(json_spec)) == {"kind": "edit"}


@pytest.mark.parametrize("content", ["- a list\n", "kind: [unclosed\n"])
def test_a_spec_that_is_not_a_mapping_is_a_clear_error(tmp_path: Path, content: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    with pytest.raises(commands.SpecFileError, match="spec.yaml"):
        commands.load_spec(str(spec))
    assert main(["jobs", "create", "-f", str(spec)]) == 1


def test_result_table_has_a_row_per_model_and_a_column_per_metric() -> None:
    result = {
        "student": {"loss": 1.5, "exact_match": 0.42, "rouge_l": 0.61, "examples": 200},
        "teacher": {"loss": 0.9, "exact_match": 0.8, "rouge_l": 0.85, "examples": 200},
        "initial_student": {"loss": 3.25, "exact_match": 0.0, "rouge_l": 0.1, "examples": 200},
    }
    lines = format_result_table(result).splitlines()
    assert lines[0].split() == ["model", "loss", "exact_match", "rouge_l", "examples"]
    assert [line.split()[0] for line in lines[1:]] == ["teacher", "initial_student", "student"]
    assert lines[3].split() == ["student", "1.5", "0.42", "0.61", "200"]
