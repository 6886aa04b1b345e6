"""Turn dataset records into (prompt text, response text) pairs.

Pure Python on purpose: the API validates uploaded JSONL with this module and must not pay for a
torch import.
"""

from __future__ import annotations

from typing import Any

PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n### Response:\n"

_ROLES = ("system", "user", "assistant")


def _require_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _chat_to_prompt_response(messages: Any) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    lines: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(f"messages[{index}].role must be one of {_ROLES}, got {role!r}")
        content = _require_str(message.get("content"), f"messages[{index}].content")
        lines.append(f"{role}: {content}")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must have role 'assistant' (it is the response)")
    if len(messages) < 2:
        raise ValueError("'messages' needs at least one turn before the assistant response")
    response = messages[-1]["content"]
    return PROMPT_TEMPLATE.format(prompt="\n".join(lines[:-1])), response


def to_prompt_response(record: dict[str, Any]) -> tuple[str, str]:
    """Render one record as ``(prompt text including PROMPT_TEMPLATE, response text)``.

    Accepted shapes:

    - ``{"prompt": str, "response": str}`` (other keys, e.g. ``task``, are ignored);
    - ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` where the
      last message is the assistant response and every earlier turn becomes a
      ``"role: content"`` line of the instruction.

    Raises:
        ValueError: the record has neither shape, or a field has the wrong type.
    """
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _chat_to_prompt_response(record["messages"])
    if "prompt" in record and "response" in record:
        prompt = _require_str(record["prompt"], "'prompt'")
        response = _require_str(record["response"], "'response'")
        return PROMPT_TEMPLATE.format(prompt=prompt), response
    raise ValueError(
        "a record needs either 'prompt' and 'response' strings or a 'messages' list; "
        f"got keys {sorted(record)}"
    )
