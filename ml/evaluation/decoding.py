"""Batched decoding from any next-token scorer: greedy, or sampling with temperature and
nucleus (top-p) truncation. The scorer is a model's own logits, or DISCO's contrast of an edited
and an original model (:func:`ml.editing.disco.disco_next_token_logits`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ml.editing.metrics import NextTokenLogits, prompt_ids


def top_p_filter(scores: Tensor, top_p: float) -> Tensor:
    """``scores`` ``(B, V)`` with every token outside the smallest set whose probability reaches
    ``top_p`` set to ``−inf`` (Holtzman et al. 2020, nucleus sampling). The most likely token is
    always kept."""
    if top_p >= 1.0:
        return scores
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative - torch.softmax(sorted_scores, dim=-1) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


@torch.no_grad()
def decode(
    scorer: NextTokenLogits,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """The continuation of each ``[bos] + prompt``, stopping at ``eos``; decoded, stripped."""
    eos = tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(seed)
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    for _ in range(max_new_tokens):
        active = [i for i, finished in enumerate(done) if not finished]
        if not active:
            break
        scores = scorer([rows[i] + new[i] for i in active]).float().cpu()
        if do_sample:
            filtered = top_p_filter(scores / temperature, top_p)
            probs = torch.softmax(filtered, dim=-1)
            choice = torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
        else:
            choice = scores.argmax(-1).tolist()
        for i, token in zip(active, choice, strict=True):
            if token == eos:
                done[i] = True
            else:
                new[i].append(int(token))
    return [str(tokenizer.decode(ids, skip_special_tokens=True)).strip() for ids in new]
