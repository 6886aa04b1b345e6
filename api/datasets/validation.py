"""Line-by-line validation of uploaded JSONL data.

Training data comes in two formats: ``{"prompt": str, "response": str}`` and chat
``{"messages": [{"role", "content"}]}`` whose last message is the assistant's answer. Two more
serve the other job kinds: ``edit_requests`` (the ZsRE/CounterFact fields of
:mod:`ml.editing.requests`, recognised by ``subject`` or ``target_new``) for ``kind: edit``, and
``documents`` (``{"text": str, "title"?: str}``) for ``kind: inject``. A file must use one format
throughout; the format is recorded on the dataset and checked when a job names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ml.editing.requests import EditRequestError, parse_edit_request

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 10


@dataclass
class LineError:
    line: int
    field: str
    msg: str

    def as_problem(self) -> dict[str, Any]:
        return {
            "loc": ["file", f"line {self.line}", self.field],
            "line": self.line,
            "msg": self.msg,
        }


@dataclass
class JsonlValidator:
    """Feed lines in order; ``errors`` holds the first bad lines, ``format`` the file's format."""

    rows: int = 0
    format: str | None = None
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    _line_no: int = 0

    def feed(self, raw: bytes) -> None:
        self._line_no += 1
        text = raw.strip()
        if not text:
            return
        problems = self._check(text)
        if problems:
            self.error_count += 1
            if len(self.errors) < MAX_REPORTED:
                self.errors.append(problems)
            return
        self.rows += 1

    def _check(self, text: bytes) -> LineError | None:
        n = self._line_no
        try:
            obj = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError:
            return LineError(n, "$", "not valid UTF-8")
        except json.JSONDecodeError as exc:
            return LineError(n, "$", f"not valid JSON: {exc.msg} at column {exc.colno}")
        if not isinstance(obj, dict):
            return LineError(n, "$", "each line must be a JSON object")
        if "messages" in obj:
            fmt, err = "chat", _check_chat(obj["messages"])
        elif "subject" in obj or "target_new" in obj:
            fmt, err = "edit_requests", _check_edit_request(obj)
        elif "prompt" in obj or "response" in obj:
            fmt, err = "prompt_response", _check_prompt_response(obj)
        elif "text" in obj:
            fmt, err = "documents", _check_document(obj)
        else:
            return LineError(
                n,
                "$",
                "expected 'prompt' and 'response', 'messages', an edit request "
                "('prompt', 'subject', 'target_new') or a document ('text')",
            )
        if err is not None:
            return LineError(n, err[0], err[1])
        if self.format is None:
            self.format = fmt
        elif fmt != self.format:
            return LineError(n, "$", f"line is {fmt} but the file started as {self.format}")
        return None


def _check_prompt_response(obj: dict[str, Any]) -> tuple[str, str] | None:
    for key in ("prompt", "response"):
        if key not in obj:
            return key, "field required"
        if not isinstance(obj[key], str):
            return key, "must be a string"
    if not obj["response"].strip():
        return "response", "must not be empty"
    return None


def _check_edit_request(obj: dict[str, Any]) -> tuple[str, str] | None:
    try:
        parse_edit_request(obj)
    except EditRequestError as exc:
        return exc.field or "$", exc.message
    return None


def _check_document(obj: dict[str, Any]) -> tuple[str, str] | None:
    unknown = sorted(set(obj) - {"text", "title", "id"})
    if unknown:
        return unknown[0], "is not a known field of a document ('text', 'title', 'id')"
    if not isinstance(obj["text"], str) or not obj["text"].strip():
        return "text", "must be a non-empty string"
    if "title" in obj and not isinstance(obj["title"], str):
        return "title", "must be a string"
    return None


def _check_chat(messages: Any) -> tuple[str, str] | None:
    if not isinstance(messages, list) or not messages:
        return "messages", "must be a non-empty list"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages[{i}]", "must be an object with 'role' and 'content'"
        if msg.get("role") not in ROLES:
            return f"messages[{i}].role", f"must be one of {', '.join(ROLES)}"
        if not isinstance(msg.get("content"), str):
            return f"messages[{i}].content", "must be a string"
    if messages[-1]["role"] != "assistant":
        return f"messages[{len(messages) - 1}].role", "the last message must be the assistant's"
    if len(messages) < 2:
        return "messages", "needs at least one prompt turn before the assistant's answer"
    return None
