"""Errors in the OpenAI shape, on this surface only.

The ``openai`` SDK turns a non-2xx answer into ``BadRequestError``, ``NotFoundError``, … and reads
``message``, ``type``, ``param`` and ``code`` from ``{"error": {...}}``; the rest of our API keeps
RFC 9457 problem+json. The same typed errors (``api/errors.py``) are raised everywhere; only their
rendering differs. A 422 of ours is a 400 here, as that API answers a bad request.

``OpenAIErrorRoute`` wraps the errors of its routes; ``install_openai_error_handler`` renders the
wrapper. Wrapping, rather than answering inside the route, keeps the error travelling through the
session dependency, so the request rolls back exactly as it does on every other route.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import PROBLEM_JSON, ProblemError
from api.openai_compat.schemas import OpenAIErrorBody

_LOC_SOURCES = ("body", "query", "path", "header", "form")


def param_from_loc(loc: Sequence[Any]) -> str | None:
    """``["body", "method", "supervised", "hyperparameters", "n_epochs"]`` ->
    ``"method.supervised.hyperparameters.n_epochs"``; list indices as ``[i]``."""
    parts = list(loc)
    if parts and parts[0] in _LOC_SOURCES:
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _code(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    status = 400 if status == 422 else status
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = OpenAIErrorBody.model_validate(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def _on_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    param = param_from_loc(exc.errors[0].get("loc", [])) if exc.errors else None
    code = getattr(exc, "code", None) or (
        "invalid_api_key" if exc.status == 401 else _code(exc.title)
    )
    return openai_error(exc.status, exc.detail, param=param, code=code)


async def _on_validation(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    param = param_from_loc(first.get("loc", []))
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return openai_error(400, message, param=param, code="invalid_request")


async def _on_http(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return openai_error(exc.status_code, str(exc.detail), code=_code(str(exc.detail)))


_RENDERERS: dict[type[Exception], Callable[[Request, Exception], Coroutine[Any, Any, Response]]] = {
    ProblemError: _on_problem,
    RequestValidationError: _on_validation,
    StarletteHTTPException: _on_http,
}


class OpenAISurfaceError(Exception):
    """An expected error raised on this surface, to be rendered in the OpenAI shape."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


class OpenAIErrorRoute(APIRoute):
    """Re-raises this surface's expected errors wrapped in ``OpenAISurfaceError``: they still
    travel through the session dependency (so the request rolls back as on every other route),
    and the app's handler for the wrapper renders them. Anything else (an idempotent replay, a
    bug) passes through untouched."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except tuple(_RENDERERS) as exc:
                raise OpenAISurfaceError(exc) from exc

        return openai_shaped


async def _on_surface_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAISurfaceError)
    for kind, render in _RENDERERS.items():
        if isinstance(exc.original, kind):
            return await render(request, exc.original)
    raise exc.original  # unreachable: only the kinds above are wrapped


def install_openai_error_handler(app: FastAPI) -> None:
    app.add_exception_handler(OpenAISurfaceError, _on_surface_error)


def openai_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry for the statuses a route of this surface can answer."""
    descriptions = {
        400: "Bad request",
        401: "Unauthorized",
        404: "Not found",
        409: "Conflict",
        413: "Payload too large",
    }
    out: dict[int | str, dict[str, Any]] = {
        status: {"description": descriptions[status], "model": OpenAIErrorBody}
        for status in statuses
    }
    if 413 in out:  # the body-size middleware refuses before any route: problem+json there
        out[413]["content"] = {PROBLEM_JSON: {}}
    return out
