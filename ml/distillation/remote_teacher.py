"""A remote teacher: a model too big to sit beside the student, served by an inference server
and asked, per batch, for the top-k log-probabilities at each position.

Nothing here speaks HTTP: a *score function* (the worker's HTTP client, or
:func:`score_with_model` on the server side) turns a right-padded batch into
:class:`RemoteScores`, and this module turns those into what the recipe already consumes:

* sparse top-k targets ``(token_ids, probs)`` at the response positions, in the order of
  ``logits[:, :-1][labels[:, 1:] != -100]`` -- the same targets and the same loss
  (:func:`ml.distillation.sparse_targets.sparse_kd_loss`, mode ``topk``: renormalised over the
  kept ids) as a top-k teacher-logit cache, so a remote teacher is a cache computed on the fly;
* the teacher's log-probability of each *actual* next token, which ``opd`` needs (its reward is
  ``log p(y_t)`` of the sampled token, whether or not that token is in the top-k);
* per-example rows for a teacher-logit cache (:func:`cache_batch_targets`).

Assumption: the remote model reads with the student's tokenizer (the same ids). The distill
protocol checks it (vocabulary size and tokenizer hash from ``/v1/info``); the OpenAI protocol
maps the returned token strings back to ids and fails on a string the vocabulary lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ml.data.examples import IGNORE_INDEX, collate


@dataclass(frozen=True)
class RemoteScores:
    """The teacher's scores of a right-padded batch ``(B, T)``.

    Position ``t`` describes the next-token distribution after ``input_ids[:, : t + 1]``:

    * ``top_ids (B, T, K)`` int64, the ``K`` most likely next tokens, most likely first;
    * ``top_logprobs (B, T, K)`` float32, their log-probabilities under the *full* softmax
      (so ``exp`` sums to the kept mass, ``<= 1``);
    * ``token_logprobs (B, T)`` float32, ``log p(input_ids[:, t + 1])`` at position ``t``.

    Padding positions hold id 0 and ``-inf``; ``token_logprobs`` is ``-inf`` also at each row's
    last real position (no next token).
    """

    top_ids: Tensor
    top_logprobs: Tensor
    token_logprobs: Tensor

    def __post_init__(self) -> None:
        b_t_k = tuple(self.top_ids.shape)
        if len(b_t_k) != 3 or tuple(self.top_logprobs.shape) != b_t_k:
            raise ValueError(
                f"top_ids {b_t_k} and top_logprobs {tuple(self.top_logprobs.shape)} must both "
                "be (B, T, K)"
            )
        if tuple(self.token_logprobs.shape) != b_t_k[:2]:
            raise ValueError(f"token_logprobs must be {b_t_k[:2]}, got "
                             f"{tuple(self.token_logprobs.shape)}")  # fmt: skip


# (input_ids (B, T), attention_mask (B, T)) -> scores; raises on a failed request.
ScoreFn = Callable[[Tensor, Tensor], RemoteScores]


@torch.no_grad()
def score_with_model(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, k: int
) -> RemoteScores:
    """What a teacher server computes: one forward pass, float32 log-softmax, top-k.

    ``K = min(k, V)``; see :class:`RemoteScores` for padding. Right padding with causal
    attention leaves real positions unchanged (beyond float rounding).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    log_p = torch.log_softmax(logits.float(), dim=-1)
    values, ids = log_p.topk(min(k, log_p.shape[-1]), dim=-1)
    token = torch.full(input_ids.shape, float("-inf"), device=log_p.device)
    token[:, :-1] = log_p[:, :-1].gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    has_next = torch.zeros_like(attention_mask, dtype=torch.bool)
    has_next[:, :-1] = (attention_mask[:, :-1] > 0) & (attention_mask[:, 1:] > 0)
    valid = attention_mask > 0
    return RemoteScores(
        top_ids=torch.where(valid.unsqueeze(-1), ids, torch.zeros_like(ids)),
        top_logprobs=torch.where(valid.unsqueeze(-1), values, float("-inf")),
        token_logprobs=torch.where(has_next, token, float("-inf")),
    )


def sparse_targets_from_scores(
    scores: RemoteScores, labels: Tensor, k: int | None = None
) -> tuple[Tensor, Tensor]:
    """Top-k targets at the response positions of a batch, as a top-k cache stores them.

    Args:
        scores: the batch's :class:`RemoteScores` ``(B, T, K)``.
        labels: ``(B, T)`` unshifted labels (-100 off the response); position ``t`` is kept
            when ``labels[:, t + 1] != -100``.
        k: keep the first ``min(k, K)`` ids (the most likely); None keeps all ``K``.

    Returns:
        ``token_ids (n, K')`` int64 and ``probs (n, K')`` float32 ``= exp(top_logprobs)``
        (``-inf`` becomes weight 0), rows in ``logits[:, :-1][labels[:, 1:] != -100]`` order.
    """
    if labels.shape != scores.top_ids.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the scores' "
                         f"{tuple(scores.top_ids.shape[:2])}")  # fmt: skip
    width = scores.top_ids.shape[-1] if k is None else min(k, scores.top_ids.shape[-1])
    mask = labels[:, 1:].to(scores.top_ids.device) != IGNORE_INDEX
    ids = scores.top_ids[:, :-1, :width][mask]
    probs = scores.top_logprobs[:, :-1, :width][mask].float().exp()
    return ids.long(), probs


def teacher_token_logprobs(scores: RemoteScores) -> Tensor:
    """``(B, T - 1)`` ``log p(input_ids[:, t + 1])``: the teacher side of ``opd``, aligned with
    ``sampled_token_logprobs(student_logits[:, :-1], input_ids[:, 1:])``. Padding reads 0, not
    ``-inf``: masked out of the loss, an infinite value would still turn its gradient to NaN."""
    own = scores.token_logprobs[:, :-1].float()
    return torch.where(torch.isneginf(own), torch.zeros_like(own), own)


class RemoteTeacher:
    """A teacher reached through a score function, answering what the recipe asks of it."""

    def __init__(self, score: ScoreFn, top_k: int) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self._score = score
        self.top_k = top_k
        self.requests = 0

    def scores(self, batch: Mapping[str, Tensor]) -> RemoteScores:
        """One round trip for the whole micro-batch (``input_ids``, ``attention_mask``)."""
        self.requests += 1
        return self._score(batch["input_ids"].cpu(), batch["attention_mask"].cpu())

    def sparse_targets(
        self, batch: Mapping[str, Tensor], device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``(token_ids, probs)`` ``(n, K)`` at the batch's response positions (see
        :func:`sparse_targets_from_scores`), on ``device``."""
        ids, probs = sparse_targets_from_scores(self.scores(batch), batch["labels"].cpu(),
                                                self.top_k)  # fmt: skip
        return ids.to(device), probs.to(device)

    def token_logprobs(self, batch: Mapping[str, Tensor], device: torch.device) -> Tensor:
        """``(B, T - 1)`` teacher log-probabilities of the batch's actual next tokens."""
        return teacher_token_logprobs(self.scores(batch)).to(device)


def check_vocabulary(
    info: Mapping[str, Any], *, vocab_size: int, tokenizer_sha256: str | None, url: str
) -> None:
    """Refuse a remote teacher whose vocabulary differs from the student's (same size, and the
    same tokenizer hash when both sides know it), as local same-vocabulary teachers are."""
    remote_size = info.get("vocab_size")
    if remote_size != vocab_size:
        raise ValueError(
            f"remote teacher {url} has a vocabulary of {remote_size} tokens, the student "
            f"{vocab_size}: same-vocabulary KD needs them equal"
        )
    remote_hash = info.get("tokenizer_sha256")
    if tokenizer_sha256 and remote_hash and remote_hash != tokenizer_sha256:
        raise ValueError(
            f"remote teacher {url} reads with another tokenizer (sha256 {remote_hash[:12]}…, "
            f"the student's {tokenizer_sha256[:12]}…)"
        )


ExampleTargets = tuple[Tensor, Tensor, Tensor]  # ids (n_i, K), weights (n_i, K), entropy (n_i,)


def cache_batch_targets(
    score: ScoreFn, k: int
) -> Callable[[list[dict[str, list[int]]], int], list[ExampleTargets]]:
    """A teacher-cache batch function (``write_teacher_cache``) backed by a remote teacher.

    Each example gets its top-``k`` ids and probabilities at its response positions, and as
    ``entropy`` the top-k part ``-sum_k p_k log p_k`` (a lower bound of ``H(p)``: the server
    does not send the tail). Only ``topk`` captures use it; their loss never reads the entropy.
    """

    def targets(batch_examples: list[dict[str, list[int]]], _first: int) -> list[ExampleTargets]:
        batch = collate(batch_examples, pad_id=0)
        scores = score(batch["input_ids"], batch["attention_mask"])
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        ids, probs = sparse_targets_from_scores(scores, batch["labels"], k)
        entropy = -torch.xlogy(probs, probs).sum(dim=-1)
        out: list[ExampleTargets] = []
        start = 0
        for count in mask.sum(dim=1).tolist():
            end = start + count
            out.append((ids[start:end], probs[start:end], entropy[start:end]))
            start = end
        return out

    return targets
