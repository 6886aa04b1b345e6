"""Resolves edit and inject specs inside the caller's project: the model, the datasets (each of
the format its role needs), and what can be checked without loading weights (the method's
layers against the model's depth, the architecture). A bad spec is a 422 naming the field."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api.config import Settings
from api.errors import field_error
from api.jobs.resolution import TRAINING_FORMATS, resolve_dataset, resolve_model
from api.jobs.spec_edit import EditSpec, InjectSpec

# Decoder families whose MLP output projection ml.editing.locate finds (LLaMA-style down_proj,
# GPT-2-style c_proj). Others are refused at submission rather than failing in the worker.
EDITABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


def _check_layers(params: dict[str, Any], num_layers: int | None) -> None:
    """``layer`` (one int) or ``layers`` (a list of ints) must lie inside the model."""
    for key in ("layer", "layers"):
        if key not in params:
            continue
        value = params[key]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise field_error(
                ["body", "method", "params", key],
                "must be an integer" if key == "layer" else "must be a non-empty list of integers",
            )
        for layer in values:
            if num_layers is not None and not 0 <= layer < num_layers:
                raise field_error(
                    ["body", "method", "params", key],
                    f"layer {layer} is outside the model's layers 0..{num_layers - 1}",
                )


def resolve_edit(
    session: Session, settings: Settings, project_id: str, spec: EditSpec
) -> dict[str, Any]:
    model = resolve_model(session, settings, project_id, spec.model, ["body", "model"])
    if model["model_type"] not in EDITABLE_MODEL_TYPES:
        raise field_error(
            ["body", "model"],
            f"editing supports {', '.join(EDITABLE_MODEL_TYPES)} models, not {model['model_type']}",
        )
    _check_layers(spec.method.params, model["num_layers"])
    resolved: dict[str, Any] = {
        "model": model,
        "requests": resolve_dataset(
            session, settings, project_id, spec.requests, ["body", "requests"], ("edit_requests",)
        ),
    }
    if spec.stats is not None:
        resolved["stats_corpus"] = resolve_dataset(
            session, settings, project_id, spec.stats.corpus, ["body", "stats", "corpus"],
            ("documents",),
        )  # fmt: skip
    if spec.heldout is not None:
        resolved["heldout"] = resolve_dataset(
            session, settings, project_id, spec.heldout, ["body", "heldout"], ("documents",)
        )
    if spec.mode == "single" and resolved["requests"]["rows"] != 1:
        raise field_error(
            ["body", "mode"],
            f"mode 'single' applies one edit; dataset {spec.requests} has "
            f"{resolved['requests']['rows']} (use 'batch' or 'sequential')",
        )
    return resolved


def resolve_inject(
    session: Session, settings: Settings, project_id: str, spec: InjectSpec
) -> dict[str, Any]:
    model = resolve_model(session, settings, project_id, spec.model, ["body", "model"])
    resolved: dict[str, Any] = {
        "model": model,
        "documents": resolve_dataset(
            session, settings, project_id, spec.documents, ["body", "documents"], ("documents",)
        ),
    }
    if spec.qa is not None:
        resolved["qa"] = resolve_dataset(
            session, settings, project_id, spec.qa, ["body", "qa"], TRAINING_FORMATS
        )
    if spec.eval is not None:
        resolved["eval"] = resolve_dataset(
            session, settings, project_id, spec.eval, ["body", "eval"], TRAINING_FORMATS
        )
    return resolved
