"""``POST /v1/models/{id}/generate``: text from any registered model, decoded greedily, by
sampling, or with DISCO against another model (by default the model it was edited from).

Runs in the API process on the CPU (FastAPI's thread pool), for the small models this is meant
for: models above ``DISTILL_GENERATE_MAX_PARAMETERS`` are refused with a 409, and at most two
loaded models are kept in memory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.config import get_settings
from api.deps import CallerDep, SessionDep, SettingsDep
from api.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    Unauthorized,
    field_error,
    problem_responses,
)
from api.registry import service
from api.storage import StorageUnavailable, open_store
from ml.editing.disco import disco_next_token_logits
from ml.editing.metrics import model_next_token_logits
from ml.evaluation.decoding import decode
from ml.loading import load_causal_lm, load_tokenizer
from models import Model

router = APIRouter(tags=["models"], responses=problem_responses(Unauthorized))
_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_LOCK = threading.Lock()
CACHED_MODELS = 2


class ModelTooLarge(Conflict):
    title = "Model too large to serve here"


class DiscoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    against: str | None = Field(
        default=None, description="model id to contrast with; default: the model it was edited from"
    )
    alpha: float = Field(default=1.0, ge=0, le=100)
    beta: float = Field(default=0.1, gt=0, le=1)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: Annotated[
        list[Annotated[str, Field(max_length=20000)]], Field(min_length=1, max_length=64)
    ]
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    decoding: Literal["greedy", "sample", "disco"] = "greedy"
    temperature: float = Field(default=1.0, gt=0, le=10)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    disco: DiscoOptions | None = None


class GenerateResponse(BaseModel):
    model: str
    decoding: str
    against: str | None = None
    completions: list[str]


def _loaded(row: Model, limit: int) -> tuple[Any, Any]:
    if row.num_parameters > limit:
        raise ModelTooLarge(
            f"model {row.id} has {row.num_parameters} parameters; this endpoint serves up to "
            f"{limit} (DISTILL_GENERATE_MAX_PARAMETERS)"
        )
    key = (row.path, row.weights_sha256 or "")
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]  # type: ignore[no-any-return]
    # A job's output written on a worker host is fetched from the shared store, if one is set.
    path = open_store(get_settings()).fetch_recorded(row.path)
    loaded = (load_causal_lm(path), load_tokenizer(path))
    with _LOCK:
        _CACHE[key] = loaded
        while len(_CACHE) > CACHED_MODELS:
            _CACHE.popitem(last=False)
    return loaded


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return pad if isinstance(pad, int) else int(tokenizer.eos_token_id)


@router.post(
    "/models/{model_id}/generate",
    response_model=GenerateResponse,
    responses=problem_responses(NotFound, InvalidInput, ModelTooLarge, StorageUnavailable),
)
def generate(
    model_id: str,
    body: GenerateRequest,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> GenerateResponse:
    row = service.get_or_raise(session=session, project_id=caller.project_id, model_id=model_id)
    limit = settings.generate_max_parameters
    model, tokenizer = _loaded(row, limit)
    against: str | None = None
    if body.decoding == "disco":
        options = body.disco or DiscoOptions()
        against = options.against or ((row.lineage or {}).get("base_model") or {}).get("id")
        if against is None:
            raise field_error(
                ["body", "disco", "against"], "the model has no registered base model: name one"
            )
        other_row = service.get_or_raise(session=session, project_id=caller.project_id,
                                         model_id=against)  # fmt: skip
        if other_row.tokenizer_sha256 != row.tokenizer_sha256:
            raise field_error(["body", "disco", "against"], "must share the model's tokenizer")
        original, _ = _loaded(other_row, limit)
        scorer = disco_next_token_logits(model, original, _pad_id(tokenizer),
                                         alpha=options.alpha, beta=options.beta)  # fmt: skip
    else:
        scorer = model_next_token_logits(model, _pad_id(tokenizer))
    completions = decode(scorer, tokenizer, body.prompts, max_new_tokens=body.max_new_tokens,
                         do_sample=body.decoding == "sample", temperature=body.temperature,
                         top_p=body.top_p, seed=body.seed)  # fmt: skip
    return GenerateResponse(model=row.id, decoding=body.decoding, against=against,
                            completions=completions)  # fmt: skip
