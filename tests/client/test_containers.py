"""Static checks of docker-compose.yml, the Dockerfiles and the start scripts (no Docker needed)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("api", "worker-cpu", "worker-gpu", "worker-gpu-multi")
CPU_DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker-cpu")
ALL_DOCKERFILES = (*CPU_DOCKERFILES, "Dockerfile.worker-gpu")
START_SCRIPTS = ("start-api.sh", "start-worker.sh")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    loaded: dict[str, Any] = compose["services"]
    return loaded


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical_lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical_lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical_lines]


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    return ROOT / build["context"] / build["dockerfile"]


def pinned_torch_version() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [dep for dep in project["dependencies"] if dep.startswith("torch==")]
    return pin.removeprefix("torch==")


def test_the_stack_has_its_services(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_builds_from_an_existing_dockerfile(
    services: dict[str, Any], name: str
) -> None:
    build = services[name]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert dockerfile_of(services[name]).is_file()


@pytest.mark.parametrize("name", ["postgres", "redis", *APP_SERVICES])
def test_every_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    healthcheck = services[name]["healthcheck"]
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")
    assert len(healthcheck["test"]) > 1


def test_healthchecks_probe_the_right_thing(services: dict[str, Any]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "/v1/healthz" in " ".join(services["api"]["healthcheck"]["test"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_healthy_database_and_broker(
    services: dict[str, Any], name: str
) -> None:
    depends_on = services[name]["depends_on"]
    for dependency in ("postgres", "redis"):
        assert depends_on[dependency]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_share_the_database_broker_and_volumes(
    services: dict[str, Any], name: str
) -> None:
    environment = services[name]["environment"]
    assert (
        environment["DATABASE_URL"] == "postgresql+psycopg://distill:distill@postgres:5432/distill"
    )
    assert environment["BROKER_URL"] == "redis://redis:6379/0"
    assert environment["DISTILL_DATA_ROOT"] == "/data"
    assert environment["DISTILL_MODEL_ROOTS"] == "/models"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
    api_mounts = {
        volume.split(":")[1]: volume.split(":")[0] for volume in services["api"]["volumes"]
    }
    assert mounts == api_mounts
    assert {"/data", "/models"} <= set(mounts)


def test_workers_listen_on_their_queue(services: dict[str, Any]) -> None:
    assert services["worker-cpu"]["environment"]["WORKER_QUEUES"] == "cpu"
    assert services["worker-gpu"]["environment"]["WORKER_QUEUES"] == "gpu"
    assert services["worker-gpu-multi"]["environment"]["WORKER_QUEUES"] == "gpu-multi"


def test_the_gpu_worker_reserves_one_gpu_only_in_the_gpu_profile(
    services: dict[str, Any],
) -> None:
    gpu_worker = services["worker-gpu"]
    (device,) = gpu_worker["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert gpu_worker["profiles"] == ["gpu"]
    for name, service in services.items():
        if name not in ("worker-gpu", "worker-gpu-multi"):
            assert "profiles" not in service, f"{name} must start without a profile"


def test_the_multi_gpu_worker_takes_all_gpus_and_offers_processes(
    services: dict[str, Any],
) -> None:
    worker = services["worker-gpu-multi"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert worker["profiles"] == ["gpu-multi"]
    assert worker["environment"]["DISTILL_WORKER_MAX_NPROC"] == "${DISTILL_WORKER_MAX_NPROC:-2}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_commands_are_scripts_their_image_installs(
    services: dict[str, Any], name: str
) -> None:
    (script,) = services[name]["command"]
    copies = [
        args
        for kind, args in dockerfile_instructions(dockerfile_of(services[name]))
        if kind == "COPY"
    ]
    assert any(args.endswith(f"/usr/local/bin/{script}") for args in copies)
    assert os.access(ROOT / "docker" / script, os.X_OK)


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_every_copied_path_exists(dockerfile: str) -> None:
    for kind, args in dockerfile_instructions(ROOT / "docker" / dockerfile):
        if kind != "COPY":
            continue
        words = [word for word in shlex.split(args) if not word.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile} copies missing {source}"


@pytest.mark.parametrize("script", START_SCRIPTS)
def test_start_scripts_are_executable_posix_shell(script: str) -> None:
    path = ROOT / "docker" / script
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(path)], check=True)


def test_api_script_migrates_then_serves_the_app_module() -> None:
    script = (ROOT / "docker" / "start-api.sh").read_text()
    migrate = script.index("upgrade head")
    serve = script.index("exec uvicorn api.app:app --host 0.0.0.0 --port 8000")
    assert "alembic" in script[:migrate] and migrate < serve
    assert (ROOT / "alembic.ini").is_file()


def test_worker_script_runs_one_solo_process_on_the_configured_queues() -> None:
    script = (ROOT / "docker" / "start-worker.sh").read_text()
    command = " ".join(script.replace("\\\n", " ").split())
    assert "exec celery -A workers.celery_app worker --pool solo --concurrency 1" in command
    assert '-Q "${WORKER_QUEUES:-cpu}"' in command


@pytest.mark.parametrize("module_file", ["api/app.py", "workers/celery_app.py"])
def test_modules_named_by_the_start_scripts_exist(module_file: str) -> None:
    assert (ROOT / module_file).is_file()


@pytest.mark.parametrize("dockerfile", CPU_DOCKERFILES)
def test_cpu_images_install_cpu_torch_before_the_pinned_dependencies(dockerfile: str) -> None:
    instructions = dockerfile_instructions(ROOT / "docker" / dockerfile)
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for kind, args in instructions if kind == "RUN"]
    torch_index = next(i for i, args in enumerate(runs) if "download.pytorch.org/whl/cpu" in args)
    assert f"torch=={pinned_torch_version()}" in runs[torch_index]
    install_index = next(i for i, args in enumerate(runs) if "pip install --no-deps ." in args)
    requirements_index = next(i for i, args in enumerate(runs) if "requirements.txt" in args)
    assert torch_index < requirements_index < install_index


def test_gpu_image_is_cuda_based_with_python_311() -> None:
    instructions = dockerfile_instructions(ROOT / "docker" / "Dockerfile.worker-gpu")
    base = dict(instructions)["ARG"]
    assert re.fullmatch(r"CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-ubuntu[\d.]+", base)
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert "python3.11 -m venv" in runs
    assert "download.pytorch.org/whl/cpu" not in runs
