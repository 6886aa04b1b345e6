from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="A Hugging Face directory under a configured model root")
    name: str | None = Field(default=None, max_length=200)
    trust_remote_code: bool = False


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())
    id: str
    name: str
    source: str
    path: str
    architecture: str
    model_type: str
    num_parameters: int
    vocab_size: int
    num_layers: int | None
    tokenizer_sha256: str | None
    weights_sha256: str | None
    source_job_id: str | None
    lineage: dict[str, Any]
    created_at: datetime


class ModelPage(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None
