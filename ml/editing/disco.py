"""DISCO decoding for edited models.

Outdated-issue-aware decoding (Sun et al., "Outdated Issue Aware Decoding for Reasoning
Questions on Edited Knowledge", arXiv:2406.02882, Findings of ACL 2025): an edited model asked a
question that *depends* on the edit (a two-hop question) often still answers with the outdated
fact. DISCO contrasts the edited model with the original one at every step and amplifies the
difference:

    s(x) = log p_edit(x) + α (log p_edit(x) − log p_orig(x))     for x in V_head
    V_head = {x : p_edit(x) ≥ β · max_x' p_edit(x')}                (plausibility constraint)

tokens outside ``V_head`` get ``−inf``, so an implausible token that merely lost probability in
the edit is never chosen. ``α = 0`` is plain decoding of the edited model. Greedy takes the argmax
of ``s``; sampling draws from ``softmax(s / temperature)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.metrics import NextTokenLogits, model_next_token_logits
from ml.evaluation.decoding import decode


def disco_scores(
    edited_logits: Tensor, original_logits: Tensor, *, alpha: float, beta: float
) -> Tensor:
    """The DISCO score ``s`` for next-token logits of both models, ``(B, V)`` each → ``(B, V)``
    float32, ``−inf`` outside the plausible set."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    log_edit = torch.log_softmax(edited_logits.float(), dim=-1)
    log_orig = torch.log_softmax(original_logits.float(), dim=-1)
    scores = log_edit + alpha * (log_edit - log_orig)
    threshold = log_edit.max(dim=-1, keepdim=True).values + math.log(beta)
    return scores.masked_fill(log_edit < threshold, float("-inf"))


def disco_next_token_logits(
    edited: PreTrainedModel,
    original: PreTrainedModel,
    pad_id: int,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
) -> NextTokenLogits:
    """A scorer for :func:`ml.editing.metrics.greedy_texts` that decodes with DISCO."""
    edit_scorer = model_next_token_logits(edited, pad_id)
    orig_scorer = model_next_token_logits(original, pad_id)

    def next_scores(rows: list[list[int]]) -> Tensor:
        return disco_scores(edit_scorer(rows), orig_scorer(rows), alpha=alpha, beta=beta)

    return next_scores


@torch.no_grad()
def disco_generate(
    edited: PreTrainedModel,
    original: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    alpha: float = 1.0,
    beta: float = 0.1,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Decode ``prompts`` (a batch) with DISCO, greedy or sampled, stopping at ``eos``;
    returns the new text of each, stripped."""
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    pad_id = pad if isinstance(pad, int) else int(eos)  # type: ignore[arg-type]
    scorer = disco_next_token_logits(edited, original, pad_id, alpha=alpha, beta=beta)
    return decode(scorer, tokenizer, prompts, max_new_tokens=max_new_tokens,
                  do_sample=do_sample, temperature=temperature, seed=seed)  # fmt: skip
