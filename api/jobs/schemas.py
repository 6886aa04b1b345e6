from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Progress(BaseModel):
    step: int
    total_steps: int | None


class JobOut(BaseModel):
    id: str
    kind: str
    name: str | None
    status: str
    spec: dict[str, Any]
    metadata: dict[str, Any]
    queue: str
    device: str | None
    progress: Progress
    attempts: int
    result: dict[str, Any] | None
    output_model_id: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None = Field(
        default=None,
        description="1-based place among queued jobs of this queue (all projects); "
        "null unless queued",
    )

    @classmethod
    def from_row(cls, row: Any, queue_position: int | None = None) -> JobOut:
        return cls(
            id=row.id,
            kind=row.kind,
            name=row.name,
            status=row.status,
            spec=row.spec,
            metadata=row.metadata_,
            queue=row.queue,
            device=row.device,
            progress=Progress(step=row.progress_step, total_steps=row.total_steps),
            attempts=row.attempts,
            result=row.result,
            output_model_id=row.output_model_id,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            queue_position=queue_position,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    level: str
    message: str
    data: dict[str, Any]
    created_at: datetime


class EventPage(BaseModel):
    items: list[EventOut]


class MetricOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    key: str
    step: int
    value: float
    created_at: datetime


class MetricPage(BaseModel):
    items: list[MetricOut]


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    step: int
    bytes: int
    sha256: str
    created_at: datetime


class CheckpointPage(BaseModel):
    items: list[CheckpointOut]


class DryRunProblem(BaseModel):
    loc: list[str | int]
    msg: str
    line: int | None = None
    column: int | None = None


class DryRunReport(BaseModel):
    """What a spec would run, or why it cannot (``problems``: every one found)."""

    valid: bool
    kind: Any
    problems: list[DryRunProblem]
    models: list[dict[str, Any]] = Field(description="each model resolved: id/path, arch, params")
    datasets: dict[str, dict[str, Any]]
    method: dict[str, Any] | None
    vocabulary: dict[str, Any] | None = Field(description="status: same | cross_vocab | error")
    plan: dict[str, Any] | None = Field(description="rows, steps per epoch, total steps, tokens")
    memory: dict[str, Any] | None = Field(description="peak bytes estimate and how it is made")
    time: dict[str, Any] | None = Field(description="seconds estimate and its assumption")
