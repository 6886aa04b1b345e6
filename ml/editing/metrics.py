"""Edit metrics, each measured two ways side by side.

* **teacher forcing** — the prompt followed by the reference answer is fed in one pass and each
  answer token is scored by whether the model's argmax at the previous position is that token
  (token accuracy; the common definition in EasyEdit / Yao et al. 2023, "Editing Large Language
  Models: Problems, Methods, and Opportunities"). A wrong first token does not stop the rest
  being scored, so it overstates what a user sees.
* **generation** — greedy decoding of as many tokens as the answer has, compared as text with the
  answer (exact match after stripping).

Reliability (edit prompt → ``target_new``), generalization (rephrases → ``target_new``) and
portability (two-hop questions → their new answer) compare the *edited* model with the reference
answer. Locality compares the edited model with the ORIGINAL model on unrelated prompts:
teacher-forced agreement of argmax tokens along the reference answer, and equality of the two
models' greedy continuations.

Prompts are encoded as ``[bos] + prompt`` and answers appended without specials, as in
:func:`ml.evaluation.generation.greedy_generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.requests import EditRequest

NextTokenLogits = Callable[[list[list[int]]], Tensor]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """``[bos] + prompt`` token ids."""
    bos = tokenizer.bos_token_id
    if not isinstance(bos, int):
        raise ValueError("the tokenizer needs a bos token")
    return [bos] + list(tokenizer.encode(prompt, add_special_tokens=False))


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    ids = list(tokenizer.encode(answer, add_special_tokens=False))
    if not ids:
        raise ValueError(f"answer {answer!r} has no tokens")
    return ids


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids (B, T), attention_mask (B, T), lengths (B,))``, right-padded. With a causal
    model, real tokens never see the padding after them, so positions need no adjusting."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask, torch.tensor([len(row) for row in rows])


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    return pad if isinstance(pad, int) else int(tokenizer.eos_token_id)  # type: ignore[arg-type]


@torch.no_grad()
def answer_argmax(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[tuple[list[int], list[int]]]:
    """Per pair: ``(answer token ids, model argmax at each answer position)`` under teacher
    forcing of ``[bos] + prompt + answer``."""
    out: list[tuple[list[int], list[int]]] = []
    device = _device(model)
    for start in range(0, len(prompts), batch_size):
        p_rows = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        a_rows = [answer_ids(tokenizer, a) for a in answers[start : start + batch_size]]
        ids, mask, _ = right_padded(
            [p + a for p, a in zip(p_rows, a_rows, strict=True)], _pad_id(tokenizer)
        )
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        predicted = logits.argmax(-1).cpu()
        for i, (p, a) in enumerate(zip(p_rows, a_rows, strict=True)):
            # position len(p)-1+j predicts answer token j
            out.append((a, predicted[i, len(p) - 1 : len(p) - 1 + len(a)].tolist()))
    return out


def teacher_forced_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
) -> list[float]:
    """Per pair, the fraction of answer tokens the model's argmax gets right (teacher forced)."""
    scored = answer_argmax(model, tokenizer, prompts, answers)
    return [sum(int(x == y) for x, y in zip(a, p, strict=True)) / len(a) for a, p in scored]


def model_next_token_logits(model: PreTrainedModel, pad_id: int) -> NextTokenLogits:
    """A function giving ``(B, V)`` float32 next-token logits of ``model`` for token rows of
    any lengths (one forward pass without a cache; the models here are small)."""
    device = _device(model)

    @torch.no_grad()
    def next_logits(rows: list[list[int]]) -> Tensor:
        ids, mask, lengths = right_padded(rows, pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        index = (lengths - 1).to(device)
        return logits[torch.arange(len(rows), device=device), index].float().cpu()

    return next_logits


def decode_greedy(
    next_logits: NextTokenLogits, rows: list[list[int]], num_tokens: Sequence[int]
) -> list[list[int]]:
    """Greedy continuations: row ``i`` gets exactly ``num_tokens[i]`` new tokens (argmax)."""
    rows = [list(r) for r in rows]
    new: list[list[int]] = [[] for _ in rows]
    for _ in range(max(num_tokens, default=0)):
        active = [i for i, n in enumerate(num_tokens) if len(new[i]) < n]
        choice = next_logits([rows[i] for i in active]).argmax(-1).tolist()
        for i, token in zip(active, choice, strict=True):
            rows[i].append(token)
            new[i].append(token)
    return new


def greedy_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_tokens: Sequence[int],
    *,
    next_logits: NextTokenLogits | None = None,
) -> list[str]:
    """Greedy continuation of each prompt (``num_tokens[i]`` tokens), decoded and stripped.
    ``next_logits`` replaces the model's own scores (e.g. DISCO, ``ml/editing/disco.py``)."""
    scorer = next_logits or model_next_token_logits(model, _pad_id(tokenizer))
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    out = []
    for start in range(0, len(rows), 32):
        chunk = decode_greedy(scorer, rows[start : start + 32], num_tokens[start : start + 32])
        out += [str(tokenizer.decode(ids, skip_special_tokens=True)).strip() for ids in chunk]
    return out


def greedy_exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    next_logits: NextTokenLogits | None = None,
) -> list[float]:
    """Per pair, 1.0 when the greedy continuation (as many tokens as the answer) equals it."""
    lengths = [len(answer_ids(tokenizer, a)) for a in answers]
    texts = greedy_texts(model, tokenizer, prompts, lengths, next_logits=next_logits)
    return [float(t == a.strip()) for t, a in zip(texts, answers, strict=True)]


def locality_scores(
    edited: PreTrainedModel,
    original: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
) -> tuple[list[float], list[float]]:
    """``(teacher-forced, generation)`` per pair: the fraction of answer positions where the two
    models' argmax agree, and 1.0 where their greedy continuations are equal."""
    before = answer_argmax(original, tokenizer, prompts, answers)
    after = answer_argmax(edited, tokenizer, prompts, answers)
    forced = [
        sum(int(x == y) for x, y in zip(b[1], a[1], strict=True)) / len(b[1])
        for b, a in zip(before, after, strict=True)
    ]
    lengths = [len(answer_ids(tokenizer, a)) for a in answers]
    gen_before = greedy_texts(original, tokenizer, prompts, lengths)
    gen_after = greedy_texts(edited, tokenizer, prompts, lengths)
    return forced, [float(x == y) for x, y in zip(gen_before, gen_after, strict=True)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


METRICS = ("reliability", "generalization", "locality", "portability")


def evaluate_edits(
    edited: PreTrainedModel,
    original: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    *,
    metrics: Sequence[str] = METRICS,
    portability_logits: NextTokenLogits | None = None,
) -> dict[str, dict[str, Any]]:
    """``{metric: {"teacher_forced": mean, "generation": mean, "n": pairs}}`` over all pairs of
    ``requests``. ``portability_logits`` decodes the portability questions with another scorer
    (DISCO); teacher forcing always uses the edited model itself."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(METRICS)}")
    result: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        if metric == "reliability":
            pairs = [(r.prompt, r.target_new) for r in requests]
        elif metric == "generalization":
            pairs = [(p, r.target_new) for r in requests for p in r.rephrase_prompts]
        elif metric == "locality":
            pairs = [(q.prompt, q.answer) for r in requests for q in r.locality]
        else:
            pairs = [(q.prompt, q.answer) for r in requests for q in r.portability]
        prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
        if not pairs:
            result[metric] = {"teacher_forced": float("nan"), "generation": float("nan"), "n": 0}
            continue
        if metric == "locality":
            forced, generated = locality_scores(edited, original, tokenizer, prompts, answers)
        else:
            forced = teacher_forced_accuracy(edited, tokenizer, prompts, answers)
            scorer = portability_logits if metric == "portability" else None
            generated = greedy_exact_match(edited, tokenizer, prompts, answers, next_logits=scorer)
        result[metric] = {
            "teacher_forced": _mean(forced),
            "generation": _mean(generated),
            "n": len(pairs),
        }
    return result
