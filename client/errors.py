"""Errors the SDK raises: one for API problems (RFC 9457), one for local configuration."""

from __future__ import annotations

from typing import Any


class DistillAPIError(Exception):
    """The API answered with an error status; fields mirror the problem+json document.

    ``errors`` holds the field errors (``[{"loc": [...], "msg": ...}, ...]``) when the API
    rejected a request body, so a caller can point at the offending spec field or dataset line.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.body = body
        super().__init__(str(self))

    def __str__(self) -> str:
        headline = f"{self.status} {self.title}"
        if self.detail and self.detail != self.title:
            headline += f": {self.detail}"
        lines = [headline]
        for field_error in self.errors:
            location = format_location(field_error.get("loc"))
            message = field_error.get("msg", "")
            lines.append(f"  - {location}: {message}" if location else f"  - {message}")
        return "\n".join(lines)

    @classmethod
    def from_body(cls, status: int, reason: str, body: Any) -> DistillAPIError:
        """Build from a decoded response body (a problem document, FastAPI's default, or text)."""
        if isinstance(body, dict):
            title = str(body.get("title") or reason or "Error")
            detail = body.get("detail")
            errors = body.get("errors")
            # FastAPI's default validation error puts the list of field errors in "detail".
            if isinstance(detail, list) and errors is None:
                errors, detail = detail, None
            field_errors = [e for e in errors if isinstance(e, dict)] if errors else []
            return cls(status, title, None if detail is None else str(detail), field_errors, body)
        text = body if isinstance(body, str) else None
        return cls(status, reason or "Error", (text or "").strip() or None, [], body)


def format_location(loc: Any) -> str:
    """``["body", "training", "lr"]`` -> ``body.training.lr``; list indices as ``[3]``."""
    if loc is None:
        return ""
    if not isinstance(loc, list | tuple):
        return str(loc)
    location = ""
    for part in loc:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location += f".{part}" if location else str(part)
    return location


class CredentialsError(ValueError):
    """The credentials file exists but cannot be read as the expected JSON object."""


class UnsafeArchiveError(ValueError):
    """A downloaded archive holds a member that could write outside its destination."""


class JobWaitTimeout(TimeoutError):
    """``DistillClient.wait`` gave up before the job reached a terminal status."""

    def __init__(self, job_id: str, status: str, timeout: float) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} still {status} after {timeout:g}s")
