"""A synthetic instruction-following set with short, checkable answers.

Seven templated task families over a small fixed vocabulary, so that a tiny model trained for a
few CPU minutes learns them and exact match on held-out records is meaningful. Each family has
several phrasings: :func:`split_records` holds out whole prompts (per task), so an evaluation
prompt never occurs verbatim in training — the model has to carry a fact or rule over to a
phrasing or operand combination it has not seen with it.

Pure Python (no torch import) so the API and the client can generate data cheaply.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "map", "cup", "red", "box", "pen", "hat", "fish",
    "tree", "lamp", "book", "star", "moon", "bird", "frog", "milk", "rain", "ship",
    "gold", "wind", "leaf", "rock", "sand", "blue", "king", "door", "salt", "wolf",
)  # fmt: skip

# Fictional countries, so no pretrained prior could help: the answer must be learned.
CAPITALS: dict[str, str] = {
    "Zorvia": "Kelm",
    "Ambria": "Tessa",
    "Quarn": "Oldport",
    "Velmora": "Brisk",
    "Dunholt": "Pell",
    "Marrow": "Ivet",
    "Sarnia": "Lusk",
    "Tolbane": "Fenwick",
}

MAX_ADDEND = 20  # operands are 0..MAX_ADDEND-1: small enough for a tiny model to learn
SORT_LETTERS = "abcdefghij"

Record = dict[str, str]


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    phrasing = rng.choice(
        ("Reverse the word {w}.", "Write {w} backwards.", "Spell {w} in reverse order.")
    )
    return phrasing.format(w=word), word[::-1]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    phrasing = rng.choice(
        ("Write {w} in capital letters.", "Uppercase the word {w}.", "Make {w} all caps.")
    )
    return phrasing.format(w=word), word.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(MAX_ADDEND), rng.randrange(MAX_ADDEND)
    phrasing = rng.choice(("What is {a} plus {b}?", "Add {a} and {b}."))
    return phrasing.format(a=a, b=b), str(a + b)


def _next_letter(rng: random.Random) -> tuple[str, str]:
    index = rng.randrange(25)
    letter = string.ascii_lowercase[index]
    phrasing = rng.choice(
        (
            "Which letter comes after {c}?",
            "Name the letter that follows {c} in the alphabet.",
            "What is the next letter after {c}?",
        )
    )
    return phrasing.format(c=letter), string.ascii_lowercase[index + 1]


def _sort_letters(rng: random.Random) -> tuple[str, str]:
    letters = rng.sample(SORT_LETTERS, 3)
    phrasing = rng.choice(("Sort the letters {x}.", "Put {x} in alphabetical order."))
    return phrasing.format(x=" ".join(letters)), " ".join(sorted(letters))


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    phrasing = rng.choice(
        (
            "What is the capital of {c}?",
            "Name the capital city of {c}.",
            "Which city is the capital of {c}?",
        )
    )
    return phrasing.format(c=country), CAPITALS[country]


def _count_letters(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    phrasing = rng.choice(
        ("How many letters are in {w}?", "Count the letters in {w}.", "How long is the word {w}?")
    )
    return phrasing.format(w=word), str(len(word))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": _reverse,
    "uppercase": _uppercase,
    "add": _add,
    "next_letter": _next_letter,
    "sort_letters": _sort_letters,
    "capital": _capital,
    "count_letters": _count_letters,
}


def generate_instruction_records(n: int, seed: int) -> list[Record]:
    """Return ``n`` records ``{"prompt", "response", "task"}``, deterministic in ``seed``.

    Families are drawn uniformly; prompts repeat (the families' domains are small), which is
    what lets a tiny model memorise facts such as capitals.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    names = sorted(TASKS)
    records: list[Record] = []
    for _ in range(n):
        task = rng.choice(names)
        prompt, response = TASKS[task](rng)
        records.append({"prompt": prompt, "response": response, "task": task})
    return records


def _distinct_by_task(records: list[Record], field: str) -> dict[str, list[str]]:
    """Per task (``""`` for records without one), the distinct values of ``field`` in order."""
    by_task: dict[str, list[str]] = {}
    for record in records:
        values = by_task.setdefault(record.get("task", ""), [])
        if record[field] not in values:
            values.append(record[field])
    return by_task


def corrupt_responses(records: list[Record], rate: float, seed: int) -> tuple[list[Record], int]:
    """Label noise: each record, independently with probability ``rate``, gets the response of
    another record of the same task whose response differs (a plausible but wrong answer, as a
    careless annotator or a weak generator writes). Returns ``(copies, corrupted_count)``; the
    input is not modified, prompts and tasks are kept, deterministic in ``seed``.

    Used for training data only, to model the noisy responses of real instruction sets; the
    held-out references a model is scored against stay correct.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    rng = random.Random(seed)
    responses_by_task = _distinct_by_task(records, "response")
    corrupted: list[Record] = []
    count = 0
    for record in records:
        copy = dict(record)
        if rng.random() < rate:
            task_responses = responses_by_task[record.get("task", "")]
            wrong = [r for r in task_responses if r != record["response"]]
            if wrong:
                copy["response"] = rng.choice(wrong)
                count += 1
        corrupted.append(copy)
    return corrupted, count


def write_jsonl(records: Iterable[dict[str, Any]], path: Path | str) -> None:
    """Write one JSON object per line (UTF-8), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def split_records(
    records: list[Record], eval_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Split into ``(train, eval)`` holding out whole prompts, per task.

    Records are grouped by prompt text and, within each task, about ``eval_fraction`` of the
    distinct prompts (at least one when a task has two or more) go to eval with all their
    copies. No eval prompt therefore appears in train, and every task is represented in both.
    Order within each split follows the input order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    rng = random.Random(seed)
    prompts_by_task = _distinct_by_task(records, "prompt")
    held_out: set[str] = set()
    for task in sorted(prompts_by_task):
        prompts = sorted(prompts_by_task[task])
        rng.shuffle(prompts)
        count = round(len(prompts) * eval_fraction)
        if eval_fraction > 0 and count == 0 and len(prompts) >= 2:
            count = 1
        held_out.update(prompts[:count])
    train = [r for r in records if r["prompt"] not in held_out]
    evaluation = [r for r in records if r["prompt"] in held_out]
    return train, evaluation
