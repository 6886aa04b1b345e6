"""Artifact storage: datasets, checkpoints, models and teacher caches, on the local disk or in
an S3-compatible store shared by every host.

``DISTILL_STORAGE_URL`` unset: the local disk is the store, every call here is a no-op and paths
are used as recorded (the behaviour before shared storage). Set to ``s3://bucket/prefix``: the
store is the source of truth and each host's data and artifact roots are its *cache*. A local
path under those roots maps to a key (``data/<path under the data root>``,
``artifacts/<path under the artifact root>``); the API uploads what it accepts, a worker
uploads what it writes before recording it, and fetches what a job needs when it is missing.

Paths recorded in the database are absolute paths of the host that wrote them. Another host
translates them by their layout under the roots (``<sha[:2]>/<sha>.jsonl``,
``jobs/<job id>/…``, ``models/<model id>/…``, ``teacher/<kind>/<fingerprint>``), which is the
same on every host. Directories under ``DISTILL_MODEL_ROOTS`` are the operator's, not the
store's: they must be at the same path on every host.

Transfers are streamed in ``storage_chunk_bytes`` pieces (multipart uploads of that part size),
so a transfer holds about one chunk in memory whatever the file's size. A download lands in a
staging name and is renamed into place only once complete (and its sha256 checked where one is
known), so a cache entry is always whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from api.config import Settings
from api.errors import ProblemError

log = logging.getLogger(__name__)

_DATASET_TAIL = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.jsonl$")
# Artifact layouts under the artifact root: each starts with the directory naming one artifact.
_ARTIFACT_ANCHORS = (
    re.compile(r"^jobs/job_[0-9a-z]+(/.*)?$"),
    re.compile(r"^models/mdl_[0-9a-z]+(/.*)?$"),
    re.compile(r"^teacher/(logits|seqkd)/[0-9a-f]+(/.*)?$"),
)


class StorageUnavailable(ProblemError):
    """The shared store did not take or give an artifact (unreachable, refused, missing)."""

    status, title = 503, "Storage unavailable"


class ArtifactCorrupt(RuntimeError):
    """A fetched artifact does not match the sha256 the database keeps for it."""


def confine_key(key: str) -> str:
    """``key`` as a clean relative POSIX path, or ValueError: no absolute keys, no ``..``, no
    empty or ``.`` components, no backslashes, so nothing escapes the configured prefix."""
    if not key or "\\" in key or "\x00" in key:
        raise ValueError(f"storage key {key!r} is empty or has a backslash or NUL")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} is absolute")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"storage key {key!r} has an empty, '.' or '..' component")
    return key


class RemoteStore:
    """An fsspec filesystem under ``root`` (``bucket/prefix``): byte transfers by key."""

    def __init__(self, fs: Any, root: str, chunk_bytes: int) -> None:
        self.fs, self.root, self.chunk_bytes = fs, root.rstrip("/"), chunk_bytes

    def __repr__(self) -> str:  # the root only: never the credentials in fs's options
        return f"RemoteStore({self.fs.protocol!r}, {self.root!r})"

    def _url(self, key: str) -> str:
        return f"{self.root}/{confine_key(key)}"

    def put_file(self, local: Path, key: str) -> int:
        """Streams ``local`` to ``key`` one chunk at a time (multipart above one chunk)."""
        size = 0
        with local.open("rb") as src, self.fs.open(self._url(key), "wb",
                                                   block_size=self.chunk_bytes) as dst:  # fmt: skip
            while chunk := src.read(self.chunk_bytes):
                dst.write(chunk)
                size += len(chunk)
        return size

    def get_file(self, key: str, local: Path, sha256: str | None = None) -> None:
        """Streams ``key`` into ``local`` through a staging name, checking ``sha256``."""
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        digest = hashlib.sha256()
        try:
            with self.fs.open(self._url(key), "rb", cache_type="none") as src, \
                    staging.open("wb") as dst:  # fmt: skip
                while chunk := src.read(self.chunk_bytes):
                    digest.update(chunk)
                    dst.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ArtifactCorrupt(f"{key}: sha256 {digest.hexdigest()} != recorded {sha256}")
            os.replace(staging, local)
        finally:
            staging.unlink(missing_ok=True)

    def list_files(self, key: str) -> list[str]:
        """Keys of the files under the directory ``key``, relative to it, sorted."""
        base = self._url(key)
        found = self.fs.find(base, detail=False) if self.fs.exists(base) else []
        names = [str(PurePosixPath(p).relative_to(base.split("://")[-1])) for p in found]
        return sorted(n for n in names if n != ".")

    def is_file(self, key: str) -> bool:
        return bool(self.fs.isfile(self._url(key)))

    def delete(self, key: str) -> None:
        url = self._url(key)
        if self.fs.exists(url):
            self.fs.rm(url, recursive=True)


class ArtifactStore:
    """This host's roots mapped to store keys; ``remote`` None means the local disk alone."""

    def __init__(self, remote: RemoteStore | None, data_root: Path, artifact_root: Path) -> None:
        self.remote = remote
        self.roots = {"data": data_root.resolve(), "artifacts": artifact_root.resolve()}

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    def key_for(self, local: Path) -> str:
        """The key of a path under this host's roots (ValueError elsewhere)."""
        path = Path(os.path.abspath(local))
        for name, root in self.roots.items():
            if path.is_relative_to(root) and path != root:
                return confine_key(f"{name}/{path.relative_to(root).as_posix()}")
        raise ValueError(f"{local} lies under neither the data root nor the artifact root")

    def local_for(self, key: str) -> Path:
        name, _, rest = confine_key(key).partition("/")
        if name not in self.roots or not rest:
            raise ValueError(f"storage key {key!r} names no root")
        return self.roots[name] / rest

    def localize(self, recorded: str | Path) -> Path:
        """This host's path for a path another host recorded; unchanged on the local disk, for
        paths already under this host's roots and for anything outside the known layouts
        (model roots: the operator's, shared at the same path)."""
        path = Path(recorded)
        if self.remote is None or not path.is_absolute() or ".." in path.parts:
            return path
        try:
            self.key_for(path)
            return path
        except ValueError:
            pass
        parts = path.parts
        if len(parts) > 2 and _DATASET_TAIL.match("/".join(parts[-2:])):
            return self.roots["data"] / parts[-2] / parts[-1]
        for start in range(1, len(parts)):  # the longest tail that starts with an anchor
            tail = "/".join(parts[start:])
            if any(anchor.match(tail) for anchor in _ARTIFACT_ANCHORS):
                return self.roots["artifacts"] / tail
        return path

    def upload_file(self, local: Path) -> None:
        if self.remote is None:
            return
        self._call("upload", local, lambda r: r.put_file(local, self.key_for(local)))

    def upload_dir(self, local: Path) -> None:
        """Every file under ``local``, one streamed upload each (a rewritten directory, such as
        a checkpoint saved again at the same step, replaces the old objects)."""
        if self.remote is None:
            return
        key = self.key_for(local)

        def upload(remote: RemoteStore) -> None:
            remote.delete(key)
            for file in sorted(p for p in local.rglob("*") if p.is_file()):
                remote.put_file(file, f"{key}/{file.relative_to(local).as_posix()}")

        self._call("upload", local, upload)

    def ensure_file(self, local: Path, sha256: str | None = None) -> Path:
        """``local``, fetched from the store first when this host lacks it."""
        if self.remote is None or local.is_file():
            return local
        key = self.key_for(local)
        self._call("download", local, lambda r: r.get_file(key, local, sha256))
        return local

    def ensure_dir(self, local: Path, sha256: str | None = None) -> Path:
        """The directory ``local``, fetched whole into a staging directory and renamed into
        place when this host lacks it; ``sha256`` (``directory_sha256``) checked first."""
        if self.remote is None or local.is_dir():
            return local
        key = self.key_for(local)
        staging = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")

        def download(remote: RemoteStore) -> None:
            names = remote.list_files(key)
            if not names:
                raise FileNotFoundError(f"{key} is not in the store")
            for name in names:
                remote.get_file(f"{key}/{confine_key(name)}", staging / name)

        try:
            self._call("download", local, download)
            if sha256 is not None:
                from ml.distillation.checkpointing import directory_sha256

                got = directory_sha256(staging)[0]
                if got != sha256:
                    raise ArtifactCorrupt(f"{key}: sha256 {got} != recorded {sha256}")
            try:
                os.replace(staging, local)
            except OSError:
                if not local.is_dir():  # another process on this host won the rename
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local

    def ensure(self, local: Path, sha256: str | None = None) -> Path:
        """A file or a directory, whichever the store holds under ``local``'s key."""
        if self.remote is None or local.exists():
            return local
        if self._call("look up", local, lambda r: r.is_file(self.key_for(local))):
            return self.ensure_file(local, sha256)
        return self.ensure_dir(local)

    def has(self, local: Path) -> bool:
        """Whether the store holds the file at ``local``'s key (False on the local disk)."""
        if self.remote is None:
            return False
        key = self.key_for(local)
        return bool(self._call("look up", local, lambda r: r.is_file(key)))

    def fetch_recorded(self, recorded: str | Path, sha256: str | None = None) -> Path:
        """This host's copy of what another host recorded at ``recorded``, fetched when missing:
        a ``.jsonl`` dataset (``sha256`` of the file) or a directory (``sha256`` from
        ``directory_sha256``). Paths outside the store's layout come back as recorded."""
        local = self.localize(recorded)
        if self.remote is None or local.exists():
            return local
        try:
            self.key_for(local)
        except ValueError:
            return local  # a model root: the operator's, at the same path on every host
        if local.suffix == ".jsonl":
            return self.ensure_file(local, sha256)
        return self.ensure_dir(local, sha256)

    def remove_dir(self, local: Path) -> None:
        if self.remote is not None:
            key = self.key_for(local)
            self._call("delete", local, lambda r: r.delete(key))

    def _call(self, what: str, local: Path, work: Any) -> Any:
        assert self.remote is not None
        try:
            return work(self.remote)
        except (ArtifactCorrupt, ValueError):
            raise
        except FileNotFoundError as exc:
            raise StorageUnavailable(f"{what} of {local.name}: not in the store ({exc})") from exc
        except Exception as exc:  # botocore/aiohttp errors: the type for callers, no details
            log.warning("storage %s of %s failed: %s: %s", what, local, type(exc).__name__, exc)
            raise StorageUnavailable(
                f"the artifact store failed the {what} of {local.name} ({type(exc).__name__})"
            ) from exc


def open_store(settings: Settings) -> ArtifactStore:
    """The store the settings name: the local disk, or an fsspec URL (``s3://bucket/prefix``)."""
    roots = (settings.resolved_data_root, settings.resolved_artifact_root)
    if not settings.storage_url:
        return ArtifactStore(None, *roots)
    return ArtifactStore(remote_from_settings(settings), *roots)


def remote_from_settings(settings: Settings) -> RemoteStore:
    import fsspec

    protocol, _, root = settings.storage_url.partition("://")
    if not root or ".." in root.split("/"):
        raise ValueError("DISTILL_STORAGE_URL must look like s3://bucket/prefix")
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        client: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            client["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_region:
            client["region_name"] = settings.s3_region
        options = {"client_kwargs": client, "use_listings_cache": False}
        if settings.s3_access_key_id is not None and settings.s3_secret_access_key is not None:
            options["key"] = settings.s3_access_key_id.get_secret_value()
            options["secret"] = settings.s3_secret_access_key.get_secret_value()
    fs = fsspec.filesystem(protocol, **options)
    return RemoteStore(fs, root, settings.storage_chunk_bytes)
