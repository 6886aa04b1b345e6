"""Sequential (lifelong) editing with a curve and a collapse stop.

Requests are applied one after another; every ``every`` edits the metrics are measured on the
newest block, plus retention (reliability of every earlier edit) and, when given, the perplexity
of held-out text. If locality falls below ``min_locality`` or the perplexity rises past
``max_perplexity`` the run stops with a reason and the edits since the last good point are
undone, so the model is left in its last good state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.apply import apply_edits, restore
from ml.editing.covariance import KeyCovarianceStore
from ml.editing.grace import attach_grace, find_grace
from ml.editing.metrics import evaluate_edits, prompt_ids, right_padded
from ml.editing.requests import EditRequest


@dataclass
class SequentialResult:
    """``curve``: one point per block; ``applied``: edits in the final model; ``stopped``: the
    collapse reason or None; ``deltas``: the weight delta of each applied edit, in order."""

    curve: list[dict[str, Any]]
    applied: int
    stopped: str | None
    deltas: list[dict[str, Tensor]] = field(default_factory=list)


@torch.no_grad()
def perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> float:
    """exp(mean next-token CE) over ``[bos] + text`` of every text."""
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(texts), 32):
        rows = [prompt_ids(tokenizer, t) for t in texts[start : start + 32]]
        ids, mask, _ = right_padded(rows, pad)
        labels = ids.masked_fill(mask == 0, -100)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        total += float(
            F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(device),
                ignore_index=-100,
                reduction="sum",
            )
        )
        count += int((labels[:, 1:] != -100).sum())
    return math.exp(total / max(count, 1))


def run_sequential_edits(
    model: PreTrainedModel,
    original: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    *,
    method: str,
    hparams: Mapping[str, Any] | None = None,
    stats: KeyCovarianceStore | None = None,
    every: int = 10,
    min_locality: float | None = None,
    heldout_texts: Sequence[str] = (),
    max_perplexity: float | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> SequentialResult:
    """Apply ``requests`` one by one to ``model`` (in place); see the module docstring.
    ``on_point`` receives each curve point as it is measured (for job events)."""
    if every < 1:
        raise ValueError("every must be >= 1")
    curve: list[dict[str, Any]] = []
    deltas: list[dict[str, Tensor]] = []
    good = 0
    snapshot = _codebook_snapshot(model)
    for count, request in enumerate(requests, start=1):
        outcome = apply_edits(
            model,
            tokenizer,
            [request],
            method=method,
            hparams=hparams,
            mode="sequential",
            stats=stats,
        )
        deltas.append(outcome.weight_delta)
        if count % every and count != len(requests):
            continue
        block_start = good if count % every else count - every
        point: dict[str, Any] = {
            "edits": count,
            "newest": evaluate_edits(model, original, tokenizer, requests[block_start:count]),
        }
        if block_start > 0:
            point["retention"] = evaluate_edits(
                model, original, tokenizer, requests[:block_start], metrics=["reliability"]
            )["reliability"]
        if heldout_texts:
            point["perplexity"] = perplexity(model, tokenizer, heldout_texts)
        curve.append(point)
        if on_point is not None:
            on_point(point)
        reason = _collapse(point, min_locality, max_perplexity)
        if reason is not None:
            for delta in reversed(deltas[good:]):
                restore(model, delta)  # also detaches a GRACE codebook ...
            if snapshot is not None:  # ... which goes back to its last good entries
                adaptor = attach_grace(model, snapshot[0])
                adaptor.keys, adaptor.values, adaptor.radii = snapshot[1:4]
                adaptor.answers = list(snapshot[4])
            return SequentialResult(curve, good, reason, deltas[:good])
        good = count
        snapshot = _codebook_snapshot(model)
    return SequentialResult(curve, good, None, deltas)


def _codebook_snapshot(model: PreTrainedModel) -> tuple[Any, ...] | None:
    """A GRACE codebook's entries changed in place by an edit (radii grow or split), so the
    last good codebook is kept whole rather than undone entry by entry."""
    adaptor = find_grace(model)
    if adaptor is None:
        return None
    tensors = (adaptor.keys.clone(), adaptor.values.clone(), adaptor.radii.clone())
    return (adaptor.layer, *tensors, list(adaptor.answers))


def _collapse(
    point: Mapping[str, Any], min_locality: float | None, max_perplexity: float | None
) -> str | None:
    locality = point["newest"]["locality"]["teacher_forced"]
    if min_locality is not None and locality < min_locality:
        return f"locality {locality:.3f} fell below {min_locality} after {point['edits']} edits"
    ppl = point.get("perplexity")
    if max_perplexity is not None and ppl is not None and ppl > max_perplexity:
        return (
            f"held-out perplexity {ppl:.2f} rose past {max_perplexity} after {point['edits']} edits"
        )
    return None
