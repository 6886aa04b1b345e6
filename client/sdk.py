"""Python SDK for the distillation service's REST API (``/v1``).

    with DistillClient() as client:
        dataset = client.upload_dataset("train.jsonl")
        job = client.create_job({"kind": "distill", ...})
        final = client.wait(job["id"], on_update=lambda j: print(j["progress"]))

Every method returns the decoded JSON the API sends back (plain dicts), and every error status
raises :class:`DistillAPIError`. This module imports httpx only: no torch, no fastapi.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from client.archives import pack_directory, unpack_archive
from client.credentials import resolve_credentials
from client.errors import DistillAPIError, JobWaitTimeout

Json = dict[str, Any]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024


class DistillClient:
    """A session with the API. Resolution of ``base_url``/``api_key``: see ``client.credentials``.

    ``transport`` replaces the network (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        credentials = resolve_credentials(base_url, api_key)
        self.base_url = credentials.url
        self.api_key = credentials.api_key
        self.project_id = credentials.project_id
        headers = {"Accept": "application/json, application/problem+json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DistillClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        raise_for_problem(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _paginate(self, path: str, params: Mapping[str, Any]) -> Iterator[Json]:
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self._request("GET", path, params=query)
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    # -- project -----------------------------------------------------------------------------

    def health(self) -> Json:
        result: Json = self._request("GET", "/v1/healthz")
        return result

    def me(self) -> Json:
        """The project the API key belongs to: ``{"id", "name"}``."""
        result: Json = self._request("GET", "/v1/projects/me")
        return result

    # -- datasets ----------------------------------------------------------------------------

    def upload_dataset(self, path: str | Path, name: str | None = None) -> Json:
        """Upload a JSONL file; the body is streamed from disk, never read whole."""
        path = Path(path)
        data = {"name": name} if name else None
        with path.open("rb") as handle:
            files = {"file": (path.name, handle, "application/x-ndjson")}
            result: Json = self._request("POST", "/v1/datasets", files=files, data=data)
        return result

    def list_datasets(self, *, limit: int | None = None) -> Iterator[Json]:
        """Every dataset of the project, following ``next_cursor`` (``limit`` is a page size)."""
        return self._paginate("/v1/datasets", {"limit": limit})

    def get_dataset(self, dataset_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/datasets/{dataset_id}")
        return result

    # -- models ------------------------------------------------------------------------------

    def register_model(self, path: str | Path, name: str | None = None) -> Json:
        """Register a Hugging Face directory that already lies on the server, under a model root."""
        body: Json = {"path": str(path)}
        if name:
            body["name"] = name
        result: Json = self._request("POST", "/v1/models", json=body)
        return result

    def upload_model(self, dir_or_tar: str | Path, name: str | None = None) -> Json:
        """Upload a model directory (packed to a temporary tar.gz first) or a ready tar.gz."""
        source = Path(dir_or_tar)
        model_name = name or _model_name_from_path(source)
        if source.is_dir():
            with tempfile.TemporaryFile() as archive:
                pack_directory(source, archive)
                archive.seek(0)
                return self._upload_model_archive(archive, f"{model_name}.tar.gz", model_name)
        with source.open("rb") as archive:
            return self._upload_model_archive(archive, source.name, model_name)

    def _upload_model_archive(self, archive: Any, filename: str, name: str) -> Json:
        files = {"file": (filename, archive, "application/gzip")}
        result: Json = self._request("POST", "/v1/models/upload", files=files, data={"name": name})
        return result

    def list_models(self, *, limit: int | None = None) -> Iterator[Json]:
        return self._paginate("/v1/models", {"limit": limit})

    def get_model(self, model_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/models/{model_id}")
        return result

    def generate(self, model_id: str, prompts: list[str], **options: Any) -> list[str]:
        """Completions of ``prompts``; ``options``: ``max_new_tokens``, ``decoding`` (greedy,
        sample, disco), ``temperature``, ``top_p``, ``seed``, ``disco={"against", "alpha"}``."""
        body = {"prompts": prompts, **{k: v for k, v in options.items() if v is not None}}
        result: Json = self._request("POST", f"/v1/models/{model_id}/generate", json=body)
        return list(result["completions"])

    def download_model(self, model_id: str, dest_dir: str | Path) -> Path:
        """Stream the model's tar.gz to a temporary file, then unpack it safely into ``dest_dir``.

        Members with absolute paths, ``..``, or links are refused before anything is written.
        """
        dest = Path(dest_dir)
        with tempfile.TemporaryFile() as archive:
            with self._http.stream("GET", f"/v1/models/{model_id}/download") as response:
                if response.is_error:
                    response.read()
                    raise_for_problem(response)
                for chunk in response.iter_bytes(_DOWNLOAD_CHUNK_BYTES):
                    archive.write(chunk)
            archive.seek(0)
            unpack_archive(archive, dest)
        return dest

    # -- jobs --------------------------------------------------------------------------------

    def create_job(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Json:
        """Submit a job spec (see DESIGN.md, "A job spec"); returns the job as created. With
        ``idempotency_key``, a retry of the same request returns the same job, never a second."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        result: Json = self._request("POST", "/v1/jobs", json=dict(spec), headers=headers)
        return result

    def stream_job(self, job_id: str, last_event_id: str | None = None) -> Iterator[Any]:
        """The job's Server-Sent Events (``StreamMessage``: status, event, metric, end) until
        it ends; a dropped connection resumes after the last id received."""
        from client.job_stream import follow_stream

        return follow_stream(self._http, job_id, last_event_id)

    def get_job(self, job_id: str) -> Json:
        result: Json = self._request("GET", f"/v1/jobs/{job_id}")
        return result

    def list_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int | None = None,
        **filters: Any,
    ) -> Iterator[Json]:
        """Jobs matching the filters, newest first as the API orders them, across all pages.

        ``metadata={"team": "search"}`` becomes ``metadata.team=search``; further keyword
        filters pass through as query parameters.
        """
        params: dict[str, Any] = {"status": status, "kind": kind, "limit": limit, **filters}
        for key, value in (metadata or {}).items():
            params[f"metadata.{key}"] = value
        return self._paginate("/v1/jobs", params)

    def cancel_job(self, job_id: str) -> Json:
        result: Json = self._request("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    def events(
        self, job_id: str, after_id: int | str | None = None, limit: int | None = None
    ) -> list[Json]:
        """One page of the job's events, oldest first, those after ``after_id`` only."""
        params = {"after_id": after_id, "limit": limit}
        page = self._request("GET", f"/v1/jobs/{job_id}/events", params=_present(params))
        items: list[Json] = page.get("items", [])
        return items

    def metrics(
        self,
        job_id: str,
        key: str | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
        limit: int | None = None,
    ) -> list[Json]:
        """Metric rows ``{"key", "step", "value", "created_at"}``, filtered by key and steps."""
        params = {"key": key, "step_min": step_min, "step_max": step_max, "limit": limit}
        page = self._request("GET", f"/v1/jobs/{job_id}/metrics", params=_present(params))
        items: list[Json] = page.get("items", [])
        return items

    def checkpoints(self, job_id: str) -> list[Json]:
        page = self._request("GET", f"/v1/jobs/{job_id}/checkpoints")
        items: list[Json] = page.get("items", [])
        return items

    def wait(
        self,
        job_id: str,
        poll: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[Json], None] | None = None,
    ) -> Json:
        """Poll until the job is succeeded, failed or cancelled; returns the final job.

        ``on_update`` is called with the job after every poll, the last one included.
        Raises :class:`JobWaitTimeout` (a ``TimeoutError``) after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.get("status") in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None
                raise JobWaitTimeout(job_id, str(job.get("status")), timeout)
            sleep_for = poll if deadline is None else min(poll, deadline - time.monotonic())
            time.sleep(max(sleep_for, 0.0))


def raise_for_problem(response: httpx.Response) -> None:
    """Raise :class:`DistillAPIError` for an error status, decoding problem+json when present."""
    if not response.is_error:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise DistillAPIError.from_body(response.status_code, response.reason_phrase, body)


def _present(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def _model_name_from_path(path: Path) -> str:
    name = path.resolve().name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
