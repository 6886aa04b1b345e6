"""ROME and MEMIT: closed-form updates of MLP output projections.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", Sec. 3.1): treat the
projection ``W`` (out, in) as a linear associative memory with ``W K ≈ V``. Inserting the new
pair ``(k*, v*)`` while disturbing the stored ones least — ``min ||Ŵ K − V||`` subject to
``Ŵ k* = v*`` (eq. 2) — has the rank-one solution (eq. 3)

    Ŵ = W + Λ (C⁻¹ k*)ᵀ,   Λ = (v* − W k*) / ((C⁻¹ k*)ᵀ k*),   C = K Kᵀ.

MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer", Sec. 4, eqs. 14 and 19):
many edits at once, each layer ``l`` of a range taking a share of the residual
``R = (z − h_L) / (layers left)`` through the batch least-squares update

    Δ = R Kᵀ (λ C₀ + K Kᵀ)⁻¹

where ``K`` (in, N) are the edited subjects' keys at layer ``l``, ``C₀`` the covariance of the
keys already stored and ``λ`` (``mom2_weight``) how much they count.

With ``values.through_update`` (the default; ``value_search.py``) the value search already
accounts for how each update spreads over every token, and MEMIT makes each layer's update with
``R = δ / layers`` from the keys taken before editing, so the edited model is exactly the one
the search optimised; the published layer-by-layer recomputation of ``R`` runs when it is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.covariance import KeyCovarianceStore
from ml.editing.locate import (
    EditingError,
    ProjectionSite,
    capture_input,
    layer_module,
    num_layers,
    projection_site,
    subject_last_token,
)
from ml.editing.metrics import prompt_ids, right_padded
from ml.editing.requests import EditRequest
from ml.editing.value_search import (
    UpdateSpread,
    ValueSearchParams,
    _output_at,
    rewrite_rows,
    search_values,
)


def rome_update(weight: Tensor, covariance: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """ROME eq. 3: the ``(out, in)`` rank-one ``ΔW`` with ``(W + ΔW) key == value``.

    ``weight`` (out, in), ``covariance`` (in, in) symmetric positive definite, ``key`` (in,),
    ``value`` (out,). float64 inside for the solve.
    """
    w, c, k, v = weight.double(), covariance.double(), key.double(), value.double()
    u = torch.linalg.solve(c, k)
    return (torch.outer(v - w @ k, u) / (u @ k)).to(weight.dtype)


def memit_update(residuals: Tensor, keys: Tensor, covariance: Tensor, weight: float) -> Tensor:
    """MEMIT eq. 14: ``Δ = R Kᵀ (λ C₀ + K Kᵀ)⁻¹``.

    ``residuals`` R (out, N), ``keys`` K (in, N), ``covariance`` C₀ (in, in), ``weight`` λ ≥ 0.
    Returns Δ (out, in). Solved as ``(λ C₀ + K Kᵀ) Δᵀ = K Rᵀ`` (the matrix is symmetric).
    """
    r, k, c = residuals.double(), keys.double(), covariance.double()
    gram = weight * c + k @ k.t()
    return torch.linalg.solve(gram, k @ r.t()).t().to(residuals.dtype)


def regularised(covariance: Tensor, ridge: float) -> Tensor:
    """``C + ridge · mean(diag C) · I``: keeps the solve well-posed when some key directions
    never occur in the corpus."""
    scale = covariance.diagonal().mean().clamp_min(1e-12)
    return covariance + ridge * scale * torch.eye(covariance.shape[0], dtype=covariance.dtype)


@torch.no_grad()
def subject_keys(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    site: ProjectionSite,
    requests: Sequence[EditRequest],
    contexts: Sequence[str],
) -> Tensor:
    """``(N, in)``: the projection's input at each subject's last token, averaged over
    ``contexts`` (ROME Sec. 3.1 step 1)."""
    device = next(model.parameters()).device
    rows, positions = [], []
    for request in requests:
        for context in contexts:
            prompt = context.format(request.prompt)
            rows.append(prompt_ids(tokenizer, prompt))
            positions.append(subject_last_token(tokenizer, prompt, request.subject))
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    ids, mask, _ = right_padded(rows, pad)
    with capture_input(site.module) as store:
        model(input_ids=ids.to(device), attention_mask=mask.to(device))
    keys = store["input"][torch.arange(len(rows)), torch.tensor(positions)].float().cpu()
    return keys.reshape(len(requests), len(contexts), -1).mean(dim=1)


@dataclass
class RomeParams:
    layer: int = 0
    cov_ridge: float = 1e-2
    values: ValueSearchParams = field(default_factory=ValueSearchParams)


@dataclass
class MemitParams:
    layers: tuple[int, ...] = (0, 1)
    # 1000, not the 10 first tried: locality 0.88 instead of 0.42 over a batch of 20 on the
    # facts model at the same reliability (docs/BENCHMARKS.md "Knowledge editing")
    mom2_weight: float = 1000.0
    cov_ridge: float = 1e-2
    values: ValueSearchParams = field(default_factory=ValueSearchParams)


def apply_rome(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    params: RomeParams,
    store: KeyCovarianceStore,
) -> dict[str, float]:
    """Edit ``model`` in place with one request; returns ``{"nll": value-search NLL}``."""
    site = projection_site(model, params.layer, "method.params.layer")
    covariance = regularised(store.second_moment(model, tokenizer, site), params.cov_ridge)
    key = subject_keys(model, tokenizer, site, [request], params.values.contexts)[0]
    spread = None
    if params.values.through_update:
        direction = torch.linalg.solve(covariance.double(), key.double())
        scales = (direction / (direction @ key.double())).float()[:, None]
        spread = UpdateSpread([(site.module, scales.to(site.parameter.device))])
    delta, original, nll = search_values(
        model, tokenizer, [request], site.module, params.values, spread
    )
    weight = site.weight_out_in().cpu()
    # the value the layer should emit for k*: what it emits now plus the searched shift
    value = weight @ key + delta[0].cpu()
    site.add_(rome_update(weight, covariance, key, value).to(site.parameter.device))
    return {"nll": nll}


def apply_memit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    params: MemitParams,
    store: KeyCovarianceStore,
) -> dict[str, float]:
    """Edit ``model`` in place with a batch of requests spread over ``params.layers``."""
    if not params.layers:
        raise EditingError("method.params.layers", "needs at least one layer")
    count = num_layers(model)
    layers = sorted(
        {layer % count if -count <= layer < count else layer for layer in params.layers}
    )
    sites = [projection_site(model, layer) for layer in layers]
    last = layer_module(model, layers[-1])
    device = next(model.parameters()).device
    if params.values.through_update:
        # The update is fixed by δ: layer l moves its output at a token with input x by
        # (x · S_l) δ, exactly what the search optimised (value_search.py docstring).
        spread = UpdateSpread()
        for site in sites:
            covariance = regularised(store.second_moment(model, tokenizer, site), params.cov_ridge)
            keys = subject_keys(model, tokenizer, site, requests, params.values.contexts).t()
            gram = params.mom2_weight * covariance + keys @ keys.t()
            scales = torch.linalg.solve(gram.double(), keys.double()).float() / len(sites)
            spread.sites.append((site.module, scales.to(device)))
        delta, _, nll = search_values(model, tokenizer, requests, last, params.values, spread)
        for site, (_, scales) in zip(sites, spread.sites, strict=True):
            site.add_(delta.t() @ scales.t())
        return {"nll": nll}
    delta, original, nll = search_values(model, tokenizer, requests, last, params.values)
    targets = original + delta  # z_i: the residual stream wanted after the last edited layer

    batch = rewrite_rows(tokenizer, requests, params.values.contexts[:1])
    for position, site in enumerate(sites):
        covariance = regularised(store.second_moment(model, tokenizer, site), params.cov_ridge)
        keys = subject_keys(model, tokenizer, site, requests, params.values.contexts)
        current = _output_at(
            model,
            last,
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            batch.positions.to(device),
        )
        residuals = (targets - current) / (len(sites) - position)
        update = memit_update(residuals.t().cpu(), keys.t(), covariance, params.mom2_weight)
        site.add_(update.to(site.parameter.device))
    return {"nll": nll}
