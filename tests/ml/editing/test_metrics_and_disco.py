"""Metrics and DISCO against hand computations on a stub model whose next token is known."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ml.editing.disco import disco_generate, disco_scores
from ml.editing.metrics import evaluate_edits, greedy_exact_match, teacher_forced_accuracy
from ml.editing.requests import EditRequest, PromptAnswer


class NextIdModel(nn.Module):
    """Predicts ``(last token + shift) mod V`` at every position (a fixed-logit stub)."""

    def __init__(self, vocab: int, shift: int) -> None:
        super().__init__()
        self.vocab, self.shift = vocab, shift
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Any:
        logits = torch.full((*input_ids.shape, self.vocab), -5.0)
        logits.scatter_(-1, ((input_ids + self.shift) % self.vocab)[..., None], 5.0)
        return SimpleNamespace(logits=logits)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_teacher_forcing_and_generation_by_hand(world_tokenizer: Any) -> None:
    vocab = len(world_tokenizer)
    model = NextIdModel(vocab, shift=1)
    prompt = "Vaedrou is a city in"
    last = _encode(world_tokenizer, prompt)[-1]
    # an answer of two tokens that the stub gets right: (last+1), (last+2)
    good = world_tokenizer.decode([(last + 1) % vocab, (last + 2) % vocab])
    assert _encode(world_tokenizer, good) == [(last + 1) % vocab, (last + 2) % vocab]
    # first token wrong, second right *given* the reference first token
    wrong_first = world_tokenizer.decode([(last + 5) % vocab, (last + 6) % vocab])
    assert _encode(world_tokenizer, wrong_first) == [(last + 5) % vocab, (last + 6) % vocab]
    forced = teacher_forced_accuracy(model, world_tokenizer, [prompt, prompt], [good, wrong_first])
    assert forced == [1.0, 0.5]
    generated = greedy_exact_match(model, world_tokenizer, [prompt, prompt], [good, wrong_first])
    assert generated == [1.0, 0.0]  # generation does not forgive the first token


def test_locality_compares_with_the_original(world_tokenizer: Any) -> None:
    vocab = len(world_tokenizer)
    prompt = "Vaedrou is a city in"
    last = _encode(world_tokenizer, prompt)[-1]
    answer = world_tokenizer.decode([(last + 7) % vocab, (last + 3) % vocab])
    assert len(_encode(world_tokenizer, answer)) == 2
    request = EditRequest(
        prompt=prompt,
        subject="Vaedrou",
        target_new=answer,
        locality=[PromptAnswer(prompt, answer)],
    )
    same = evaluate_edits(
        NextIdModel(vocab, 1),
        NextIdModel(vocab, 1),
        world_tokenizer,
        [request],
        metrics=["locality"],
    )
    # the reference answer is irrelevant: both models agree everywhere
    assert same["locality"] == {"teacher_forced": 1.0, "generation": 1.0, "n": 1}
    moved = evaluate_edits(
        NextIdModel(vocab, 2),
        NextIdModel(vocab, 1),
        world_tokenizer,
        [request],
        metrics=["locality"],
    )
    assert moved["locality"]["teacher_forced"] == 0.0
    assert moved["locality"]["generation"] == 0.0


def test_disco_score_by_hand() -> None:
    edited = torch.tensor([[2.0, 1.0, -3.0, 0.0]])
    original = torch.tensor([[2.5, 0.0, -3.0, 0.5]])
    scores = disco_scores(edited, original, alpha=1.0, beta=0.2)
    log_e = edited - torch.logsumexp(edited, -1, keepdim=True)
    log_o = original - torch.logsumexp(original, -1, keepdim=True)
    expected = 2 * log_e - log_o
    # plausible: p_e(x) >= 0.2 max p_e  <=>  logit >= 2 + ln 0.2 = 0.39 -> tokens 0 and 1
    assert torch.isinf(scores[0, 2]) and torch.isinf(scores[0, 3])
    torch.testing.assert_close(scores[0, :2], expected[0, :2])
    # token 1 gained 1 nat on the edit and token 0 lost 0.5: DISCO prefers 1, plain decoding 0
    assert int(edited.argmax()) == 0 and int(scores.argmax()) == 1
    # s1 - s0 = 2 (e1 - e0) - (o1 - o0) = 2 * (1 - 2) - (0 - 2.5) = 0.5 (normalisers cancel)
    assert math.isclose(float(scores[0, 1] - scores[0, 0]), 0.5, abs_tol=1e-5)


def test_disco_alpha_zero_is_plain_greedy(world_tokenizer: Any) -> None:
    vocab = len(world_tokenizer)
    prompts = ["Vaedrou is a city in", "The city of Sethfe lies in"]
    plain = disco_generate(
        NextIdModel(vocab, 1),
        NextIdModel(vocab, 2),
        world_tokenizer,
        prompts,
        max_new_tokens=3,
        alpha=0.0,
    )
    expected = []
    for prompt in prompts:
        last = _encode(world_tokenizer, prompt)[-1]
        tokens = [(last + k) % vocab for k in (1, 2, 3)]
        expected.append(world_tokenizer.decode(tokens, skip_special_tokens=True).strip())
    assert plain == expected


def test_disco_rejects_bad_weights() -> None:
    with pytest.raises(ValueError):
        disco_scores(torch.zeros(1, 3), torch.zeros(1, 3), alpha=-1.0, beta=0.1)
    with pytest.raises(ValueError):
        disco_scores(torch.zeros(1, 3), torch.zeros(1, 3), alpha=1.0, beta=0.0)
