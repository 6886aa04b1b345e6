"""Edit requests: the ZsRE/CounterFact fields, parsed from JSON-like dicts with typed errors.

A request (one JSONL line) is::

    {"prompt": "Kemae Themka was born in", "subject": "Kemae Themka",
     "target_new": " Lixda", "ground_truth": " Moultha",          # ground_truth optional
     "rephrase_prompts": ["The birthplace of Kemae Themka is"],
     "locality": [{"prompt": "...", "answer": "..."}],
     "portability": [{"prompt": "...", "answer": "..."}]}

``target_new`` is appended to the prompt as is, so it normally starts with a space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

REQUIRED_TEXT_FIELDS = ("prompt", "subject", "target_new")
LIST_OF_TEXT_FIELDS = ("rephrase_prompts",)
LIST_OF_PAIR_FIELDS = ("locality", "portability")
KNOWN_FIELDS = (
    set(REQUIRED_TEXT_FIELDS)
    | {"ground_truth"}
    | set(LIST_OF_TEXT_FIELDS)
    | set(LIST_OF_PAIR_FIELDS)
)


class EditRequestError(ValueError):
    """A request is malformed. ``field`` is the path inside the request (e.g.
    ``"locality.1.answer"``), ``index`` the request's position (0-based line) when known."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.message = message
        where = f"request {index}, " if index is not None else ""
        super().__init__(f"{where}field {field!r}: {message}")


@dataclass(frozen=True)
class PromptAnswer:
    prompt: str
    answer: str


@dataclass(frozen=True)
class EditRequest:
    """One fact to change: ``prompt`` (containing ``subject``) should continue with
    ``target_new`` instead of ``ground_truth``."""

    prompt: str
    subject: str
    target_new: str
    ground_truth: str | None = None
    rephrase_prompts: list[str] = field(default_factory=list)
    locality: list[PromptAnswer] = field(default_factory=list)
    portability: list[PromptAnswer] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": self.target_new,
            "ground_truth": self.ground_truth,
            "rephrase_prompts": list(self.rephrase_prompts),
            "locality": [{"prompt": q.prompt, "answer": q.answer} for q in self.locality],
            "portability": [{"prompt": q.prompt, "answer": q.answer} for q in self.portability],
        }


def _text(value: Any, path: str, index: int | None, *, blank_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise EditRequestError(path, f"must be a string, got {type(value).__name__}", index)
    if not blank_ok and not value.strip():
        raise EditRequestError(path, "must not be empty", index)
    return value


def _pairs(value: Any, name: str, index: int | None) -> list[PromptAnswer]:
    if not isinstance(value, list):
        raise EditRequestError(name, "must be a list of {prompt, answer} objects", index)
    pairs = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise EditRequestError(f"{name}.{i}", "must be an object {prompt, answer}", index)
        for key in ("prompt", "answer"):
            if key not in item:
                raise EditRequestError(f"{name}.{i}.{key}", "is required", index)
        pairs.append(
            PromptAnswer(
                _text(item["prompt"], f"{name}.{i}.prompt", index),
                _text(item["answer"], f"{name}.{i}.answer", index),
            )
        )
    return pairs


def parse_edit_request(data: Any, *, index: int | None = None) -> EditRequest:
    """Validate one request dict; raise :class:`EditRequestError` naming the first bad field.

    Rules: ``prompt``, ``subject``, ``target_new`` are non-empty strings; the subject occurs in
    the prompt (ROME/MEMIT/GRACE read the key at the subject's last token); optional lists have
    the right element types; unknown fields are refused.
    """
    if not isinstance(data, Mapping):
        raise EditRequestError("", "a request must be a JSON object", index)
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise EditRequestError(unknown[0], "is not a known field", index)
    for name in REQUIRED_TEXT_FIELDS:
        if name not in data:
            raise EditRequestError(name, "is required", index)
    prompt = _text(data["prompt"], "prompt", index)
    subject = _text(data["subject"], "subject", index)
    target_new = _text(data["target_new"], "target_new", index)
    if subject not in prompt:
        raise EditRequestError("subject", f"{subject!r} does not occur in the prompt", index)
    ground_truth = data.get("ground_truth")
    if ground_truth is not None:
        ground_truth = _text(ground_truth, "ground_truth", index)
    rephrases_raw = data.get("rephrase_prompts", [])
    if not isinstance(rephrases_raw, list):
        raise EditRequestError("rephrase_prompts", "must be a list of strings", index)
    rephrases = [
        _text(item, f"rephrase_prompts.{i}", index) for i, item in enumerate(rephrases_raw)
    ]
    return EditRequest(
        prompt=prompt,
        subject=subject,
        target_new=target_new,
        ground_truth=ground_truth,
        rephrase_prompts=rephrases,
        locality=_pairs(data.get("locality", []), "locality", index),
        portability=_pairs(data.get("portability", []), "portability", index),
    )


def parse_edit_requests(records: Sequence[Any]) -> list[EditRequest]:
    """Parse every record (``index`` = its position); the first bad one raises."""
    if not records:
        raise EditRequestError("", "no edit requests given")
    return [parse_edit_request(record, index=i) for i, record in enumerate(records)]
