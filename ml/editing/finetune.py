"""Constrained fine-tuning (``ft``): gradient steps on the target tokens that move only the
MLP output projections of the chosen layers, each weight kept within ``±max_change`` of its
original value (an L∞ ball, Zhu et al. 2020, "Modifying Memories in Transformer Models", Sec. 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.locate import projection_site
from ml.editing.requests import EditRequest
from ml.editing.value_search import rewrite_rows


@dataclass
class FtParams:
    layers: tuple[int, ...] = (0,)
    steps: int = 30
    lr: float = 5e-3
    max_change: float = 5e-3
    stop_nll: float = 0.02


def apply_ft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    params: FtParams,
) -> dict[str, float]:
    """Fine-tune in place on ``prompt + target_new`` of all ``requests`` (one batch); returns
    ``{"nll": last target NLL}``. Parameters outside the chosen projections are not touched
    (their gradients are never computed)."""
    sites = [projection_site(model, layer) for layer in params.layers]
    weights = [site.parameter for site in sites]
    originals = [w.detach().clone() for w in weights]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    device = next(model.parameters()).device
    batch = rewrite_rows(tokenizer, requests)
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    labels = batch.labels.to(device)
    optimizer = torch.optim.Adam(weights, lr=params.lr)
    nll_value = float("inf")
    was_training = model.training
    model.eval()  # no dropout: the edit should be deterministic
    try:
        for _ in range(params.steps):
            optimizer.zero_grad()
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
            nll_value = float(nll.detach())
            if nll_value < params.stop_nll:
                break
            nll.backward()
            optimizer.step()
            with torch.no_grad():
                for w, w0 in zip(weights, originals, strict=True):
                    w.copy_(torch.max(torch.min(w, w0 + params.max_change), w0 - params.max_change))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return {"nll": nll_value}
