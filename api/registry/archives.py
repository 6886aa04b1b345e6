"""Model archives: safe extraction of uploads and tar.gz packing for downloads."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

from api.errors import InvalidInput, PayloadTooLarge

CHUNK = 1024 * 1024


def extract_upload(source: BinaryIO, dest: Path, *, max_bytes: int) -> Path:
    """Stream the archive to disk, then extract with tarfile's ``data`` filter (no absolute
    paths, no ``..``, no links leaving the tree, no devices). Returns the model directory: the
    archive's root, or its single top-level folder."""
    dest.mkdir(parents=True, exist_ok=False)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, suffix=".tar.part")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"The upload is larger than the limit of {max_bytes} bytes."
                    )
                out.write(chunk)
        try:
            with tarfile.open(tmp_name, "r:*") as archive:
                archive.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise InvalidInput(
                f"The archive cannot be extracted: {exc}",
                errors=[{"loc": ["file"], "msg": f"not a safe tar archive: {exc}"}],
            ) from exc
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def pack_directory(source: Path) -> Path:
    """Write ``source`` as a tar.gz into a temp file and return its path (caller deletes it)."""
    fd, tmp_name = tempfile.mkstemp(suffix=".tar.gz")
    os.close(fd)
    with tarfile.open(tmp_name, "w:gz") as archive:
        archive.add(source, arcname=source.name)
    return Path(tmp_name)
