"""Lifelong (sequential) editing with a curve and a collapse guard.

Requests are applied one after another, each on the result of the previous. Every
``eval_every`` edits the model is measured: the four metrics over the edits made so far (their
reliability is the *retention* of earlier edits), and optionally the perplexity of held-out
texts against the original model's. When locality falls under ``min_locality`` or the
perplexity ratio passes ``max_perplexity_ratio``, editing stops and the model is put back to
the last measured state that passed: sequential editing is known to break models after enough
edits (Gupta et al. 2024, "Model Editing at Scale leads to Gradual and Catastrophic
Forgetting"), and a service must not hand back a broken one.

The last good state is a copy of the model kept in memory (twice the model's size).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.apply import apply_edits
from ml.editing.covariance import KeyCovarianceStore
from ml.editing.metrics import METRICS, evaluate_edits
from ml.editing.requests import EditRequest

CurveSink = Callable[[int, dict[str, float]], None]


@dataclass
class SequentialOutcome:
    """``model`` is the last state that passed (the edited model itself when nothing
    collapsed); ``kept`` how many edits it holds; ``points`` the curve, one dict per
    measurement (``edits`` plus flat metric keys); ``collapsed_at`` the edit count whose
    measurement failed, or None; ``stopped`` True when ``should_stop`` ended it early."""

    model: PreTrainedModel
    kept: int
    points: list[dict[str, float]] = field(default_factory=list)
    collapsed_at: int | None = None
    reason: str | None = None
    stopped: bool = False


@torch.no_grad()
def perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> float:
    """exp of the mean next-token NLL over every token of ``texts`` (each ``[bos] + text``)."""
    device = next(model.parameters()).device
    bos = tokenizer.bos_token_id
    total, count = 0.0, 0
    for text in texts:
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        if isinstance(bos, int):
            ids = [bos, *ids]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        total, count = total + float(nll), count + len(ids) - 1
    if count == 0:
        raise ValueError("no held-out text has two tokens")
    return math.exp(total / count)


def flatten(scores: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"reliability/teacher_forced": .., "reliability/generation": .., ...}`` (NaN dropped)."""
    flat: dict[str, float] = {}
    for metric, values in scores.items():
        for way in ("teacher_forced", "generation"):
            value = float(values[way])
            if not math.isnan(value):
                flat[f"{metric}/{way}"] = value
    return flat


def edit_sequentially(
    model: PreTrainedModel,
    original: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    *,
    method: str,
    hparams: dict[str, Any] | None,
    stats: KeyCovarianceStore | None,
    eval_every: int,
    metrics: Sequence[str] = METRICS,
    min_locality: float = 0.0,
    heldout: Sequence[str] = (),
    max_perplexity_ratio: float | None = None,
    on_point: CurveSink | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SequentialOutcome:
    """Apply ``requests`` one by one to ``model`` (in place) and measure every ``eval_every``
    edits and after the last; see the module docstring. ``original`` is never changed."""
    if eval_every < 1:
        raise ValueError("eval_every must be at least 1")
    base_ppl = perplexity(original, tokenizer, heldout) if heldout else None
    good = copy.deepcopy(model)
    outcome = SequentialOutcome(model=model, kept=0)
    for done, request in enumerate(requests, start=1):
        if should_stop():
            outcome.stopped = True
            break
        apply_edits(model, tokenizer, [request], method=method, hparams=hparams,
                    mode="sequential", stats=stats)  # fmt: skip
        if done % eval_every and done != len(requests):
            continue
        point = {"edits": float(done)}
        point.update(flatten(evaluate_edits(model, original, tokenizer, requests[:done],
                                            metrics=metrics)))  # fmt: skip
        if base_ppl is not None:
            point["heldout/perplexity_ratio"] = perplexity(model, tokenizer, heldout) / base_ppl
        outcome.points.append(point)
        if on_point is not None:
            on_point(done, point)
        reason = _collapse(point, min_locality, max_perplexity_ratio)
        if reason is not None:
            outcome.collapsed_at, outcome.reason = done, reason
            outcome.model = good
            return outcome
        good = copy.deepcopy(model)
        outcome.kept = done
    outcome.model = good if outcome.stopped else model
    if not outcome.stopped:
        outcome.kept = len(requests)
    return outcome


def _collapse(point: dict[str, float], min_locality: float, max_ratio: float | None) -> str | None:
    locality = point.get("locality/teacher_forced")
    if locality is not None and locality < min_locality:
        return f"locality {locality:.3f} fell under {min_locality}"
    ratio = point.get("heldout/perplexity_ratio")
    if max_ratio is not None and ratio is not None and ratio > max_ratio:
        return f"held-out perplexity rose {ratio:.2f}x, past {max_ratio}x"
    return None
