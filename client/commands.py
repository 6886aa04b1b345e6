"""What each ``distill`` subcommand does; ``client.cli`` maps the command line onto these.

Every handler takes the parsed arguments and returns the exit status. The ``serve``, ``demo``
and ``admin`` handlers import server code inside the function, so client commands stay light.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from client.credentials import DEFAULT_URL, save_credentials
from client.rendering import (
    format_cell,
    format_result_table,
    print_json,
    print_record,
    print_table,
)
from client.sdk import DistillClient

DATASET_COLUMNS = ["id", "name", "format", "rows", "bytes", "created_at"]
MODEL_COLUMNS = ["id", "name", "source", "architecture", "num_parameters", "created_at"]
JOB_COLUMNS = ["id", "kind", "name", "status", "progress", "created_at"]
EVENT_COLUMNS = ["id", "created_at", "level", "message"]
METRIC_COLUMNS = ["key", "step", "value", "created_at"]
CHECKPOINT_COLUMNS = ["id", "step", "bytes", "sha256", "created_at"]


class SpecFileError(ValueError):
    """The job spec file cannot be read as a YAML or JSON mapping."""


# -- helpers ---------------------------------------------------------------------------------


def open_client(args: argparse.Namespace) -> DistillClient:
    return DistillClient(base_url=args.url, api_key=args.api_key)


def show(args: argparse.Namespace, value: Any, columns: Sequence[str] | None = None) -> None:
    """Print ``value`` as JSON under ``--json``, else as a table (list) or a record (dict)."""
    if args.json:
        print_json(value)
    elif isinstance(value, list):
        print_table(value, columns or sorted({key for row in value for key in row}))
    else:
        print_record(value)


def job_row(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress") or {}
    step, total = progress.get("step"), progress.get("total_steps")
    shown = f"{step or 0}/{total}" if total else format_cell(step)
    return {**job, "progress": shown}


def load_spec(path: str) -> dict[str, Any]:
    """A job spec from a YAML or JSON file (``-`` reads standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecFileError(f"{path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise SpecFileError(f"{path} must hold a mapping (the job spec), not {type(spec).__name__}")
    return spec


def parse_meta_filter(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


# -- datasets and models ---------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.health())
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.me())
    return 0


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.upload_dataset(args.file, name=args.name))
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, list(client.list_datasets()), DATASET_COLUMNS)
    return 0


def cmd_datasets_get(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.get_dataset(args.id))
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.register_model(args.path, name=args.name))
    return 0


def cmd_models_upload(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.upload_model(args.dir, name=args.name))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, list(client.list_models()), MODEL_COLUMNS)
    return 0


def cmd_models_get(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.get_model(args.id))
    return 0


def cmd_models_generate(args: argparse.Namespace) -> int:
    disco = {k: v for k, v in (("against", args.against), ("alpha", args.alpha)) if v is not None}
    with open_client(args) as client:
        completions = client.generate(
            args.id, list(args.prompts), max_new_tokens=args.max_new_tokens,
            decoding=args.decoding, temperature=args.temperature, seed=args.seed,
            disco=disco or None,
        )  # fmt: skip
    show(args, {"model_id": args.id, "completions": completions})
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        dest = client.download_model(args.id, args.dest)
    show(args, {"model_id": args.id, "path": str(dest.resolve())})
    return 0


# -- jobs ------------------------------------------------------------------------------------


def cmd_jobs_create(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    with open_client(args) as client:
        job = client.create_job(spec)
        if args.json and not args.watch:
            print_json(job)
        elif not args.json:
            print(f"{job['id']} {job['status']}")
        if args.watch:
            return follow_job(client, job["id"], args)
    return 0


def cmd_jobs_get(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.get_job(args.id))
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        jobs = client.list_jobs(status=args.status, kind=args.kind, metadata=dict(args.meta))
        listed = list(itertools.islice(jobs, args.limit) if args.limit else jobs)
    show(args, listed if args.json else [job_row(job) for job in listed], JOB_COLUMNS)
    return 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        return follow_job(client, args.id, args)


def follow_job(client: DistillClient, job_id: str, args: argparse.Namespace) -> int:
    """Wait for the job (a progress bar unless ``--json``); 0 only when it succeeded."""
    if args.json:
        job = client.wait(job_id, poll=args.poll)
        print_json(job)
    else:
        from client.job_watch import watch_job  # tqdm is only needed here

        try:
            job = watch_job(client, job_id, poll=args.poll)
        except KeyboardInterrupt:
            print(f"\nstopped watching; {job_id} keeps running", file=sys.stderr)
            return 130
        report_final_job(job)
    return 0 if job.get("status") == "succeeded" else 1


def report_final_job(job: dict[str, Any]) -> None:
    status = job.get("status")
    if status == "succeeded":
        print(f"{job['id']} succeeded")
        if job.get("output_model_id"):
            print(f"output model: {job['output_model_id']}")
        if isinstance(job.get("result"), dict) and job["result"]:
            print(format_result_table(job["result"]))
        return
    error = job.get("error")
    detail = f": {format_cell(error)}" if error else ""
    print(f"{job['id']} {status}{detail}", file=sys.stderr)


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        job = client.cancel_job(args.id)
    if args.json:
        print_json(job)
    else:
        print(f"{job['id']} {job['status']}")
    return 0


def cmd_jobs_events(args: argparse.Namespace) -> int:
    events: list[dict[str, Any]] = []
    after_id = args.after_id
    with open_client(args) as client:
        while page := client.events(args.id, after_id=after_id):
            events.extend(page)
            if page[-1].get("id") in (None, after_id):
                break  # no usable cursor: stop rather than fetch the same page forever
            after_id = page[-1]["id"]
    show(args, events, EVENT_COLUMNS)
    return 0


def cmd_jobs_metrics(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        rows = client.metrics(args.id, key=args.key, step_min=args.step_min, step_max=args.step_max)
    show(args, rows, METRIC_COLUMNS)
    return 0


def cmd_jobs_checkpoints(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        show(args, client.checkpoints(args.id), CHECKPOINT_COLUMNS)
    return 0


def cmd_jobs_download(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        job = client.get_job(args.id)
        model_id = job.get("output_model_id")
        if not model_id:
            print(f"{args.id} has no output model (status {job.get('status')})", file=sys.stderr)
            return 1
        dest = client.download_model(model_id, args.dest)
    show(args, {"job_id": args.id, "model_id": model_id, "path": str(dest.resolve())})
    return 0


# -- server-side commands (lazy imports) ------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from client.serve import serve

    return serve(args.host, args.port, args.workers)


def cmd_demo(args: argparse.Namespace) -> int:
    from client.demo import run_demo

    return run_demo(args)


def cmd_admin_set_project_limit(args: argparse.Namespace) -> int:
    from api.errors import ProblemError
    from api.projects.admin import set_project_limit_cli

    raw = args.max_running_jobs
    try:
        limit = None if raw == "default" else int(raw)
        print_json(set_project_limit_cli(args.project_id, limit))
    except (ValueError, ProblemError) as error:
        print(f"max_running_jobs: {getattr(error, 'detail', error)}", file=sys.stderr)
        return 2
    return 0


def cmd_admin_create_project(args: argparse.Namespace) -> int:
    from api.projects.admin import create_project_cli

    limit = getattr(args, "max_running_jobs", None)
    extra = {"max_running_jobs": limit} if limit is not None else {}
    project = create_project_cli(args.name, **extra)
    project_id = project.get("id") or project.get("project_id")
    if args.save:
        url = args.url or os.environ.get("DISTILL_URL") or DEFAULT_URL
        path = save_credentials(url, project["api_key"], project_id)
        print(f"credentials saved to {path}", file=sys.stderr)
    if args.json:
        print_json(project)
    else:
        print(f"project  {project_id}")
        print(f"api_key  {project['api_key']}")
        print("The API key is shown only once: store it now.", file=sys.stderr)
    return 0
