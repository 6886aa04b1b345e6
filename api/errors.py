"""Typed errors that carry their HTTP status, rendered as RFC 9457 problem+json in one place."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """Base of every expected error. Subclasses fix ``status`` and ``title``."""

    status: int = 500
    title: str = "Internal error"
    type: str = "about:blank"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class Unauthorized(ProblemError):
    status, title = 401, "Unauthorized"


class NotFound(ProblemError):
    status, title = 404, "Not found"


class Conflict(ProblemError):
    status, title = 409, "Conflict"


class PayloadTooLarge(ProblemError):
    status, title = 413, "Payload too large"


class InvalidInput(ProblemError):
    """422 with per-field errors: ``errors=[{"loc": ["body", "method", "loss"], "msg": ...}]``."""

    status, title = 422, "Invalid input"


def field_error(loc: list[str | int], msg: str, detail: str | None = None) -> InvalidInput:
    where = ".".join(str(p) for p in loc)
    return InvalidInput(detail or f"{where}: {msg}", errors=[{"loc": loc, "msg": msg}])


def problem_response(
    status: int, title: str, detail: str, errors: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# What every problem+json body holds, so the OpenAPI document can be checked against answers.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def problem_responses(*errors: type[ProblemError]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry a route declares for the typed errors it can raise."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        out[err.status] = {
            "description": err.title,
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
    return out


def _document_problems(app: FastAPI) -> None:
    """FastAPI documents every request-validation failure as a 422 ``application/json``
    ``HTTPValidationError``; ``on_validation`` answers problem+json, and a body that is not
    JSON at all gets a 400 from ``on_http``, and one over the size limit a 413 from the body-size
    middleware. Rewrite the document to say what is sent (an operation that declares its own
    400 renders errors its own way and is left alone)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        for item in document.get("paths", {}).values():
            for operation in item.values():
                responses = operation.get("responses", {})
                if not isinstance(responses, dict) or "400" in responses:
                    continue
                schema = responses.get("422", {}).get("content", {}).get("application/json", {})
                if str(schema.get("schema", {}).get("$ref", "")).endswith("/HTTPValidationError"):
                    responses["422"] = problem_responses(InvalidInput)[422]
                if "requestBody" in operation:
                    responses["400"] = {
                        "description": "Malformed body",
                        "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
                    }
                    # api/body_limit.py refuses an oversized body before any route runs.
                    responses.setdefault("413", problem_responses(PayloadTooLarge)[413])
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        out.append({"loc": list(err.get("loc", [])), "msg": str(err.get("msg", "invalid"))})
    return out


def install_error_handlers(app: FastAPI) -> None:
    async def on_problem(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(exc.status, exc.title, exc.detail, exc.errors)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}" + (
            f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        )
        return problem_response(422, "Invalid input", detail, errors)

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(exc.status_code, str(exc.detail), str(exc.detail))

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    _document_problems(app)
