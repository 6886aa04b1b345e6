"""Terminal output for the CLI: aligned tables for people, JSON for pipelines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO


def print_json(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str), file=stream or sys.stdout)


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def format_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned columns with a header; a missing field shows as ``-``."""
    cells = [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [len(column) for column in columns]
    for line in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, line, strict=True)]
    rendered = [columns, *cells]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in rendered
    )


def print_table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], stream: TextIO | None = None
) -> None:
    print(format_table(rows, columns), file=stream or sys.stdout)


def print_record(record: Mapping[str, Any], stream: TextIO | None = None) -> None:
    """One object as ``key: value`` lines, keys aligned."""
    width = max((len(key) for key in record), default=0)
    for key, value in record.items():
        print(f"{key.ljust(width)}  {format_cell(value)}", file=stream or sys.stdout)


EVAL_METRICS = ("loss", "exact_match", "rouge_l", "examples")
EVAL_ROLES = ("teacher", "initial_student", "student")


def format_result_table(result: Mapping[str, Any]) -> str:
    """A job's eval result as one row per model role and one column per metric.

    ``result`` is ``{"student": {...}, "teacher": {...}, "initial_student": {...}}``; roles or
    metrics the job did not report are left out, unknown ones are appended.
    """
    roles = [role for role in EVAL_ROLES if isinstance(result.get(role), Mapping)]
    roles += [
        role for role, value in result.items() if role not in roles and isinstance(value, Mapping)
    ]
    metrics: list[str] = []
    for role in roles:
        for metric in result[role]:
            if metric not in metrics:
                metrics.append(metric)
    known = [metric for metric in EVAL_METRICS if metric in metrics]
    ordered = known + [metric for metric in metrics if metric not in EVAL_METRICS]
    rows = [{"model": role, **result[role]} for role in roles]
    return format_table(rows, ["model", *ordered])
