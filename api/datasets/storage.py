"""Content-addressed dataset files: streamed to a temp file, hashed and validated on the way,
then renamed into ``<data root>/<sha[:2]>/<sha>.jsonl``. A rejected upload leaves nothing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from api.datasets.validation import JsonlValidator
from api.errors import InvalidInput, PayloadTooLarge

CHUNK = 1024 * 1024


@dataclass
class StoredFile:
    relative_path: str
    sha256: str
    bytes: int
    rows: int
    format: str


def store_jsonl(source: BinaryIO, *, data_root: Path, max_bytes: int) -> StoredFile:
    tmp_dir = data_root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest, size, validator = hashlib.sha256(), 0, JsonlValidator()
        pending = b""
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"The upload is larger than the limit of {max_bytes} bytes."
                    )
                digest.update(chunk)
                out.write(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    validator.feed(line)
            if pending:
                validator.feed(pending)
            out.flush()
            os.fsync(out.fileno())
        _raise_if_invalid(validator)
        sha = digest.hexdigest()
        relative = f"{sha[:2]}/{sha}.jsonl"
        final = data_root / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)  # identical content may already be there: same bytes, same name
        assert validator.format is not None
        return StoredFile(relative, sha, size, validator.rows, validator.format)
    finally:
        tmp.unlink(missing_ok=True)


def _raise_if_invalid(validator: JsonlValidator) -> None:
    if validator.errors:
        first = validator.errors[0]
        more = validator.error_count - 1
        detail = f"line {first.line}: {first.field}: {first.msg}" + (
            f" ({more} more bad line{'s' if more != 1 else ''})" if more else ""
        )
        raise InvalidInput(detail, errors=[e.as_problem() for e in validator.errors])
    if validator.rows == 0:
        raise InvalidInput(
            "The file has no rows.", errors=[{"loc": ["file"], "msg": "no JSON lines found"}]
        )
