"""The job spec body, as JSON or as YAML (the dashboard's new-job form sends YAML).

YAML is read with a ``yaml.SafeLoader`` (no Python objects) that refuses aliases, after the
same size limit as JSON (``max_spec_bytes``; the body-size middleware enforces it first, this is
the fallback for bodies it lets through). A syntax error is a 422 naming the line and column.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml
from fastapi import Depends, Request

from api.config import Settings
from api.deps import settings_dep
from api.errors import InvalidInput, PayloadTooLarge

YAML_MEDIA_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")

# The OpenAPI request body of the routes that take a spec: JSON object or YAML text.
SPEC_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A job spec (docs/SPEC.md), as JSON or YAML",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def parse_spec_text(raw: bytes, content_type: str, limit: int) -> Any:
    """The decoded body. Raises InvalidInput (with ``line``/``column`` for YAML) or
    PayloadTooLarge."""
    if len(raw) > limit:
        raise PayloadTooLarge(f"the job spec is {len(raw)} bytes; the limit is {limit}")
    media_type = content_type.split(";", 1)[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _body_error(f"the body is not UTF-8: {exc}") from exc
    if media_type in YAML_MEDIA_TYPES:
        return _load_yaml(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _body_error(exc.msg, line=exc.lineno, column=exc.colno) from exc


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases: ``*name`` could expand a small body into an
    exponentially large spec (the "billion laughs"), and a job spec never needs one."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in a job spec", mark
            )
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader: no Python objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        problem = exc.problem or str(exc)
        raise _body_error(f"YAML syntax error: {problem}", line=line, column=column) from exc
    except yaml.YAMLError as exc:
        raise _body_error(f"YAML error: {exc}") from exc


def _body_error(msg: str, *, line: int | None = None, column: int | None = None) -> InvalidInput:
    error: dict[str, Any] = {"loc": ["body"], "msg": msg}
    where = ""
    if line is not None:
        error |= {"line": line, "column": column}
        where = f" (line {line}, column {column})"
    return InvalidInput(f"body: {msg}{where}", errors=[error])


async def read_spec_body(
    request: Request, settings: Annotated[Settings, Depends(settings_dep)]
) -> Any:
    raw = await request.body()
    return parse_spec_text(raw, request.headers.get("content-type", ""), settings.max_spec_bytes)


SpecBody = Annotated[Any, Depends(read_spec_body)]
