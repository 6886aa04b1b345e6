from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2000, description="http(s) URL that receives the POSTs")
    event_types: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="e.g. ['job.succeeded', 'job.failed']; empty or ['job.*'] means all",
    )
    description: str | None = Field(default=None, max_length=200)


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    url: str
    event_types: list[str]
    description: str | None
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_…: shown only in this response; verifies signatures")


class WebhookPage(BaseModel):
    items: list[WebhookOut]


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: float
    created_at: datetime


class DeliveryOut(BaseModel):
    id: int
    message_id: str = Field(description="the webhook-id header, the same on every retry")
    event_type: str
    status: str = Field(description="pending | delivered | failed")
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    payload: dict[str, Any]
    log: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: int | None
