from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ml.data.formatting import PROMPT_TEMPLATE, to_prompt_response
from ml.data.instructions import (
    TASKS,
    corrupt_responses,
    generate_instruction_records,
    split_records,
    write_jsonl,
)


def test_prompt_response_record_uses_template() -> None:
    prompt, response = to_prompt_response({"prompt": "Add 1 and 2.", "response": "3"})
    assert prompt == "### Instruction:\nAdd 1 and 2.\n### Response:\n"
    assert response == "3"


def test_chat_record_renders_earlier_turns_as_role_lines() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of Zorvia?"},
            {"role": "assistant", "content": "Kelm"},
        ]
    }
    prompt, response = to_prompt_response(record)
    assert prompt == PROMPT_TEMPLATE.format(prompt="system: Be brief.\nuser: Capital of Zorvia?")
    assert response == "Kelm"


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "x"},
        {"prompt": 1, "response": "y"},
        {"messages": []},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        ["not", "a", "dict"],
    ],
)
def test_bad_records_raise_value_error(record: object) -> None:
    with pytest.raises(ValueError):
        to_prompt_response(record)  # type: ignore[arg-type]


def test_formatting_and_instructions_do_not_import_torch() -> None:
    code = "import sys, ml.data.formatting, ml.data.instructions; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert result.stdout.strip() == "False"


def test_generated_records_are_deterministic_and_cover_all_tasks() -> None:
    first = generate_instruction_records(200, seed=3)
    assert first == generate_instruction_records(200, seed=3)
    assert first != generate_instruction_records(200, seed=4)
    assert {r["task"] for r in first} == set(TASKS)
    answers = {r["prompt"]: r["response"] for r in first}
    assert answers.get("Reverse the word cat.", "tac") == "tac"
    for record in first:
        if record["task"] == "uppercase":
            assert record["response"] == record["response"].upper()
        if record["task"] == "add":
            numbers = [
                int(t.strip("?.")) for t in record["prompt"].split() if t.strip("?.").isdigit()
            ]
            assert int(record["response"]) == sum(numbers)


def test_split_holds_out_whole_prompts_per_task() -> None:
    records = generate_instruction_records(500, seed=1)
    train, held_out = split_records(records, 0.2, seed=0)
    assert len(train) + len(held_out) == len(records)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert {r["task"] for r in held_out} == set(TASKS)
    assert split_records(records, 0.2, seed=0) == (train, held_out)


def test_corrupt_responses_swaps_in_wrong_answers_of_the_same_task() -> None:
    records = generate_instruction_records(2000, seed=3)
    before = [dict(r) for r in records]
    noisy, count = corrupt_responses(records, 0.2, seed=7)

    assert records == before  # the input is untouched
    changed = [(a, b) for a, b in zip(records, noisy, strict=True) if a != b]
    assert len(changed) == count
    assert 0.16 < count / len(records) < 0.24  # about the rate
    responses_by_task: dict[str, set[str]] = {}
    for record in records:
        responses_by_task.setdefault(record["task"], set()).add(record["response"])
    for clean, dirty in changed:
        assert dirty["prompt"] == clean["prompt"] and dirty["task"] == clean["task"]
        assert dirty["response"] != clean["response"]  # wrong ...
        assert dirty["response"] in responses_by_task[clean["task"]]  # ... but plausible
    assert corrupt_responses(records, 0.2, seed=7) == (noisy, count)
    assert corrupt_responses(records, 0.0, seed=7) == (before, 0)
    with pytest.raises(ValueError, match="rate"):
        corrupt_responses(records, 1.5, seed=7)


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    records = generate_instruction_records(5, seed=0)
    path = tmp_path / "sub" / "data.jsonl"
    write_jsonl(records, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
