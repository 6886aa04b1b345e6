"""The editing entry point: ``apply_edits(model, tokenizer, requests, method=..., hparams=...,
mode=...)`` → :class:`EditOutcome` (DESIGN.md "Editing contract").

The model is edited in place (copy it first to keep the original in memory). Weight methods
(``ft``, ``rome``, ``memit``) return ``weight_delta``: for every changed parameter, ``new − old``
in float64 (the difference of two float32/bf16 tensors is exact in float64), so that
:func:`restore` gives back the original bit for bit and :func:`reapply` redoes the edit.
``grace`` changes no weight: it wraps one projection in a codebook module
(``outcome.codebook``, saved with :func:`ml.editing.grace.save_codebook`) and is undone by
:func:`restore`, which also detaches it.

Modes: ``single`` takes exactly one request; ``batch`` makes one update for all requests where
the method has one (``ft``, ``memit``) and applies ``rome``/``grace`` request by request;
``sequential`` applies requests one after another, each on the result of the previous.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.covariance import KeyCovarianceStore
from ml.editing.finetune import FtParams, apply_ft
from ml.editing.grace import GraceAdaptor, GraceParams, apply_grace, detach_grace, find_grace
from ml.editing.locate import EditingError
from ml.editing.requests import EditRequest
from ml.editing.rome import MemitParams, RomeParams, apply_memit, apply_rome
from ml.editing.value_search import ValueSearchParams

METHODS = ("ft", "rome", "memit", "grace")
MODES = ("single", "batch", "sequential")
PARAMS_TYPES: dict[str, type] = {
    "ft": FtParams,
    "rome": RomeParams,
    "memit": MemitParams,
    "grace": GraceParams,
}


@dataclass
class EditOutcome:
    """``model`` (the same object, edited), ``weight_delta`` ``{parameter name: new − old}``
    (float64, only changed parameters), ``codebook`` for GRACE, ``steps`` one dict per update
    (the value search's final NLL, …)."""

    model: PreTrainedModel
    weight_delta: dict[str, Tensor]
    codebook: GraceAdaptor | None = None
    steps: list[dict[str, float]] = field(default_factory=list)


def _build(cls: type, values: Mapping[str, Any], path: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise EditingError(f"{path}.{key}", f"unknown parameter; known: {sorted(known)}")
        if key == "values" and isinstance(value, Mapping):
            value = _build(ValueSearchParams, value, f"{path}.values")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as error:  # pragma: no cover - dataclass signature mismatch
        raise EditingError(path, str(error)) from error


def parse_hparams(method: str, hparams: Mapping[str, Any] | Any | None) -> Any:
    """The method's parameter dataclass from a dict (``method.params`` of a spec)."""
    if method not in PARAMS_TYPES:
        raise EditingError("method.name", f"unknown editing method {method!r}; known: {METHODS}")
    cls = PARAMS_TYPES[method]
    if hparams is None:
        return cls()
    if is_dataclass(hparams) and isinstance(hparams, cls):
        return hparams
    if not isinstance(hparams, Mapping):
        raise EditingError("method.params", "must be an object")
    return _build(cls, hparams, "method.params")


def _snapshot(model: PreTrainedModel) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def apply_edits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    *,
    method: str,
    hparams: Mapping[str, Any] | Any | None = None,
    mode: str = "batch",
    stats: KeyCovarianceStore | None = None,
) -> EditOutcome:
    """Apply ``requests`` to ``model`` in place with ``method``; see the module docstring.

    ``stats`` is required by ``rome`` and ``memit`` (the key covariance, computed once per model
    and layer and cached). Raises :class:`EditingError` naming the field for an unknown method or
    mode, a bad parameter, a layer outside the model or an unsupported architecture; nothing is
    changed when it raises before the first update.
    """
    if mode not in MODES:
        raise EditingError("mode", f"unknown mode {mode!r}; known: {MODES}")
    params = parse_hparams(method, hparams)
    if not requests:
        raise EditingError("requests", "no edit requests given")
    if mode == "single" and len(requests) != 1:
        raise EditingError("mode", f"mode 'single' takes one request, got {len(requests)}")
    if method in ("rome", "memit") and stats is None:
        raise EditingError("method.name", f"{method} needs key statistics (stats=...)")
    before = _snapshot(model)
    steps: list[dict[str, float]] = []
    one_update = mode == "batch" and method in ("ft", "memit")
    groups = [list(requests)] if one_update else [[request] for request in requests]
    for group in groups:
        if method == "ft":
            steps.append(apply_ft(model, tokenizer, group, params))
        elif method == "memit":
            assert stats is not None
            steps.append(apply_memit(model, tokenizer, group, params, stats))
        elif method == "rome":
            assert stats is not None
            steps.append(apply_rome(model, tokenizer, group[0], params, stats))
        else:
            steps.append(apply_grace(model, tokenizer, group[0], params))
    delta = weight_delta(before, model)
    return EditOutcome(model=model, weight_delta=delta, codebook=find_grace(model), steps=steps)


@torch.no_grad()
def weight_delta(before: Mapping[str, Tensor], model: PreTrainedModel) -> dict[str, Tensor]:
    """``{name: after − before}`` in float64 for the parameters that changed."""
    delta: dict[str, Tensor] = {}
    for name, parameter in model.named_parameters():
        if name not in before:
            continue
        if not torch.equal(parameter, before[name]):
            delta[_canonical(name)] = parameter.detach().double() - before[name].double()
    return delta


def _canonical(name: str) -> str:
    # a GRACE wrapper shows the wrapped projection as ``….inner.weight``
    return name.replace(".inner.", ".")


@torch.no_grad()
def restore(model: PreTrainedModel, delta: Mapping[str, Tensor]) -> None:
    """Undo an edit: subtract ``delta`` from the parameters and detach any GRACE codebook."""
    detach_grace(model)
    parameters = dict(model.named_parameters())
    for name, change in delta.items():
        parameter = parameters[name]
        parameter.copy_((parameter.double() - change.to(parameter.device)).to(parameter.dtype))


@torch.no_grad()
def reapply(model: PreTrainedModel, delta: Mapping[str, Tensor]) -> None:
    """Redo a weight edit on the original model (``delta`` from :func:`apply_edits`)."""
    parameters = dict(model.named_parameters())
    for name, change in delta.items():
        parameter = parameters[name]
        parameter.copy_((parameter.double() + change.to(parameter.device)).to(parameter.dtype))
