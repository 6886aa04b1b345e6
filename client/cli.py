"""The ``distill`` command line: datasets, models and jobs over the REST API, plus ``serve``,
``demo`` and ``admin create-project``, which run server code imported only when called.

Exit status: 0 success; 1 a watched job ended failed/cancelled, or a local error; 2 an API
error (its problem detail and field errors go to stderr) or bad usage; 3 the server cannot
be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from client import commands
from client.errors import CredentialsError, DistillAPIError, UnsafeArchiveError

Handler = Callable[[argparse.Namespace], int]
JOB_STATUSES = ["validating", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Every leaf parser repeats these with SUPPRESS defaults, so `distill --json jobs list`
    # and `distill jobs list --json` both work and a leaf never resets a value given earlier.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--url", default=default(None), help="API base URL (env DISTILL_URL)")
    parser.add_argument("--api-key", default=default(None), help="API key (env DISTILL_API_KEY)")
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


class _CommandTree:
    """Adds leaf commands that share the global options and name their handler."""

    def __init__(self, common: argparse.ArgumentParser) -> None:
        self.common = common

    def group(
        self, parent: argparse._SubParsersAction, name: str, help: str
    ) -> argparse._SubParsersAction:
        group_parser = parent.add_parser(name, help=help, description=help)
        return group_parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def leaf(
        self, parent: argparse._SubParsersAction, name: str, handler: Handler, help: str
    ) -> argparse.ArgumentParser:
        leaf_parser = parent.add_parser(name, help=help, description=help, parents=[self.common])
        leaf_parser.set_defaults(handler=handler)
        return leaf_parser


def _add_poll(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")


def _add_dataset_commands(tree: _CommandTree, top: argparse._SubParsersAction) -> None:
    datasets = tree.group(top, "datasets", "upload and list JSONL datasets")
    upload = tree.leaf(datasets, "upload", commands.cmd_datasets_upload, "upload a JSONL file")
    upload.add_argument("file", help="path of the JSONL file")
    upload.add_argument("--name", help="dataset name (default: the file name)")
    tree.leaf(datasets, "list", commands.cmd_datasets_list, "list the project's datasets")
    get = tree.leaf(datasets, "get", commands.cmd_datasets_get, "show one dataset")
    get.add_argument("id")


def _add_model_commands(tree: _CommandTree, top: argparse._SubParsersAction) -> None:
    models = tree.group(top, "models", "register, upload, list and download models")
    register = tree.leaf(
        models, "register", commands.cmd_models_register, "register a model directory on the server"
    )
    register.add_argument("path", help="Hugging Face directory under a server model root")
    register.add_argument("--name")
    upload = tree.leaf(
        models, "upload", commands.cmd_models_upload, "upload a local model directory or tar.gz"
    )
    upload.add_argument("dir", help="Hugging Face directory (save_pretrained output) or .tar.gz")
    upload.add_argument("--name", help="model name (default: the directory name)")
    tree.leaf(models, "list", commands.cmd_models_list, "list the project's models")
    get = tree.leaf(models, "get", commands.cmd_models_get, "show one model and its lineage")
    get.add_argument("id")
    download = tree.leaf(
        models, "download", commands.cmd_models_download, "download a model into a directory"
    )
    download.add_argument("id")
    download.add_argument("dest", help="directory to unpack the model into")
    generate = tree.leaf(
        models, "generate", commands.cmd_models_generate, "complete prompts with a model"
    )
    generate.add_argument("id")
    generate.add_argument("prompts", nargs="+")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--decoding", choices=["greedy", "sample", "disco"], default="greedy")
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--against", help="disco: the model to contrast with (default: base)")
    generate.add_argument("--alpha", type=float, help="disco: contrast strength (default 1.0)")


def _add_job_commands(tree: _CommandTree, top: argparse._SubParsersAction) -> None:
    jobs = tree.group(top, "jobs", "submit, follow and inspect jobs")
    create = tree.leaf(jobs, "create", commands.cmd_jobs_create, "submit a job spec")
    create.add_argument("-f", "--file", required=True, help="job spec, YAML or JSON (- for stdin)")
    create.add_argument("--watch", action="store_true", help="follow the job until it ends")
    _add_poll(create)
    get = tree.leaf(jobs, "get", commands.cmd_jobs_get, "show one job")
    get.add_argument("id")
    listing = tree.leaf(jobs, "list", commands.cmd_jobs_list, "list jobs, newest first")
    listing.add_argument("--status", choices=JOB_STATUSES)
    listing.add_argument("--kind", help="distill, edit or inject")
    listing.add_argument(
        "--meta",
        action="append",
        default=[],
        type=commands.parse_meta_filter,
        metavar="KEY=VALUE",
        help="metadata filter, repeatable (e.g. --meta team=search)",
    )
    listing.add_argument("--limit", type=int, help="show at most this many jobs")
    watch = tree.leaf(jobs, "watch", commands.cmd_jobs_watch, "follow a job until it ends")
    watch.add_argument("id")
    _add_poll(watch)
    cancel = tree.leaf(jobs, "cancel", commands.cmd_jobs_cancel, "cancel a job")
    cancel.add_argument("id")
    events = tree.leaf(jobs, "events", commands.cmd_jobs_events, "print a job's events")
    events.add_argument("id")
    events.add_argument("--after-id", help="only events after this event id")
    metrics = tree.leaf(jobs, "metrics", commands.cmd_jobs_metrics, "print a job's metrics")
    metrics.add_argument("id")
    metrics.add_argument("--key", help="one metric, e.g. train/loss")
    metrics.add_argument("--step-min", type=int)
    metrics.add_argument("--step-max", type=int)
    checkpoints = tree.leaf(
        jobs, "checkpoints", commands.cmd_jobs_checkpoints, "list a job's checkpoints"
    )
    checkpoints.add_argument("id")
    download = tree.leaf(
        jobs, "download", commands.cmd_jobs_download, "download the model a job produced"
    )
    download.add_argument("id")
    download.add_argument("dest", help="directory to unpack the model into")


def _add_server_commands(tree: _CommandTree, top: argparse._SubParsersAction) -> None:
    serve = tree.leaf(top, "serve", commands.cmd_serve, "run the API (and embedded worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    demo = tree.leaf(top, "demo", commands.cmd_demo, "train a tiny teacher and distil it")
    demo.add_argument("--teacher-steps", type=int, help="training steps for the demo teacher")
    demo.add_argument("--quick", action="store_true", help="the smallest run that shows the flow")
    admin = tree.group(top, "admin", "operator commands run on the server machine")
    create_project = tree.leaf(
        admin, "create-project", commands.cmd_admin_create_project, "create a project and API key"
    )
    create_project.add_argument("name")
    create_project.add_argument(
        "--save", action="store_true", help="also write $DISTILL_HOME/credentials.json"
    )
    create_project.add_argument(
        "--max-running-jobs", type=int, help="jobs running at once (default: the server's)"
    )
    set_limit = tree.leaf(
        admin, "set-project-limit", commands.cmd_admin_set_project_limit,
        "set a project's limit on jobs running at once",
    )  # fmt: skip
    set_limit.add_argument("project_id")
    set_limit.add_argument("max_running_jobs", help="a number, or 'default'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Distillation as a service.")
    _add_global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress=True)
    tree = _CommandTree(common)
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tree.leaf(top, "health", commands.cmd_health, "check that the API answers")
    tree.leaf(top, "whoami", commands.cmd_whoami, "show the project of the API key")
    _add_dataset_commands(tree, top)
    _add_model_commands(tree, top)
    _add_job_commands(tree, top)
    _add_server_commands(tree, top)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except DistillAPIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"error: cannot reach the API ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 3
    except (CredentialsError, commands.SpecFileError, UnsafeArchiveError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
