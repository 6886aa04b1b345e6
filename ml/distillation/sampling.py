"""Seeded, batch-invariant sampling from causal LMs: the decoding core of the data modes.

Every response is drawn token by token from ``[bos] + prompt`` (the context
:func:`ml.data.examples.encode_example` builds), left-padded within a batch and decoded with a
KV cache. Randomness is per prompt: one call draws one seed per prompt from the caller's
``torch.Generator`` and each row then uses its own CPU generator, so the samples depend only on
the generator's state and the prompt's index, not on ``batch_size``, the device or when other
rows stop. Sampling is inverse-CDF on float64 probabilities computed in float32 from the logits.

Used by :mod:`ml.distillation.data_modes` (``seqkd``, ``onpolicy``, ``opd``, ``skd``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "GenerationSettings",
    "IncrementalDecoder",
    "choose_tokens",
    "decode_responses",
    "draw_uniforms",
    "encode_prompt",
    "fit_context",
    "row_generators",
    "sample_from_contexts",
    "sample_responses",
    "sample_token_ids",
    "special_ids",
]


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are drawn.

    Attributes:
        max_new_tokens: at most this many response tokens (``eos`` included), ``>= 1``.
        temperature: ``>= 0``; ``0`` means greedy (argmax, no randomness). Logits are divided
            by it before ``top_k`` / ``top_p`` filtering.
        top_p: nucleus mass in ``(0, 1]`` (Holtzman et al. 2020, "The Curious Case of Neural
            Text Degeneration", Sec. 3.1): keep the most probable tokens, in order, while the
            mass *before* a token is ``< top_p`` (so at least one survives); ``1`` keeps all.
        top_k: keep the ``top_k`` largest logits (ties at the k-th value kept too); ``0`` keeps
            all.

    Filters apply in the order temperature -> top_k -> top_p, as in Hugging Face ``generate``.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an int, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int, int]:
    """``(bos, eos, pad)`` ids; ``pad`` falls back to ``eos`` when the tokenizer has none."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if not isinstance(bos, int) or not isinstance(eos, int):
        raise ValueError("the tokenizer needs bos and eos tokens")
    return bos, eos, pad if isinstance(pad, int) else eos


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """``[bos] + prompt`` ids, exactly the context :func:`encode_example` puts before a response."""
    bos, _, _ = special_ids(tokenizer)
    return [bos] + list(tokenizer.encode(prompt, add_special_tokens=False))


def fit_context(
    context: list[int], max_new_tokens: int, max_length: int | None
) -> tuple[list[int], int]:
    """Truncate a ``[bos] + prompt`` context and size the response so both fit ``max_length``.

    With ``max_length=None`` nothing is cut and the budget is ``max_new_tokens``. Otherwise the
    context keeps at most ``max(max_length - max_new_tokens, max_length // 2)`` tokens: its
    first token (``bos``) and the *end* of the prompt (the part next to the response, as in
    :func:`encode_example`). The response budget is ``min(max_new_tokens, max_length - kept)``,
    always ``>= 1``.

    Returns:
        ``(context, budget)``.
    """
    if max_length is None:
        return list(context), max_new_tokens
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    keep = min(len(context), max(max_length - max_new_tokens, max_length // 2))
    kept = (
        list(context) if keep == len(context) else context[:1] + context[len(context) - keep + 1 :]
    )
    return kept, min(max_new_tokens, max_length - len(kept))


def row_generators(n: int, generator: torch.Generator | None) -> list[torch.Generator]:
    """``n`` CPU generators seeded from one ``randint`` draw of ``generator``.

    ``generator=None`` draws from torch's global CPU RNG (reproducible after
    ``torch.manual_seed``). The draw has a fixed size, so ``generator``'s state after the call
    depends only on ``n``, never on what was sampled.
    """
    seeds = torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds.tolist()]


def draw_uniforms(generators: Sequence[torch.Generator]) -> Tensor:
    """One ``U[0, 1)`` float64 per row generator -> ``(rows,)`` on the CPU."""
    return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])


def choose_tokens(logits: Tensor, settings: GenerationSettings, uniforms: Tensor) -> Tensor:
    """Pick one token per row from next-token ``logits (batch, vocab)``.

    Greedy settings return ``argmax`` (``uniforms`` unused). Otherwise the temperature / top-k /
    top-p filtered distribution ``pi`` (float32 softmax) is inverted at ``uniforms (batch,)``
    in ``[0, 1)``: the token is the smallest ``v`` with ``CDF_pi(v) > u * CDF_pi(vocab - 1)``
    (float64 cumsum), so a filtered-out (zero-probability) token is never returned and
    ``P(v) = pi(v)`` exactly for ``u ~ U[0, 1)``.

    Returns:
        ``(batch,)`` long on ``logits.device``.
    """
    if settings.greedy:
        return logits.argmax(dim=-1)
    scores = logits.float() / settings.temperature
    vocab = scores.shape[-1]
    if 0 < settings.top_k < vocab:
        kth = torch.topk(scores, settings.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= settings.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.double().cumsum(dim=-1)
    targets = uniforms.to(device=cdf.device, dtype=torch.float64) * cdf[:, -1]
    chosen = torch.searchsorted(cdf, targets.unsqueeze(-1), right=True).squeeze(-1)
    return chosen.clamp(max=vocab - 1)


def _model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


class IncrementalDecoder:
    """Next-token logits of left-padded contexts, then one appended token per row per step.

    Left padding puts every row's last real token at the same column; ``position_ids`` count
    real tokens only (``cumsum(attention_mask) - 1``), so a padded row sees the positions it
    would see alone. The KV cache (``past_key_values``) makes each step cost one token.
    """

    def __init__(self, model: PreTrainedModel, contexts: Sequence[Sequence[int]], pad_id: int):
        if not contexts or any(len(c) == 0 for c in contexts):
            raise ValueError("every context needs at least one token")
        self.model = model
        device = _model_device(model)
        width = max(len(c) for c in contexts)
        self._mask = torch.zeros((len(contexts), width), dtype=torch.long, device=device)
        input_ids = torch.full((len(contexts), width), pad_id, dtype=torch.long, device=device)
        for row, context in enumerate(contexts):
            input_ids[row, width - len(context) :] = torch.tensor(list(context), device=device)
            self._mask[row, width - len(context) :] = 1
        self._pending = input_ids
        self._cache: Any = None
        parameters = inspect.signature(model.forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    @torch.no_grad()
    def logits(self) -> Tensor:
        """``(batch, vocab)`` float32 next-token logits after everything fed so far."""
        positions = self._mask.cumsum(dim=-1) - 1
        positions = positions.clamp(min=0)[:, -self._pending.shape[1] :]
        output = self.model(
            input_ids=self._pending,
            attention_mask=self._mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
            **self._keep_last,
        )
        self._cache = output.past_key_values
        return output.logits[:, -1].float()

    def append(self, tokens: Tensor) -> None:
        """Feed ``tokens (batch,)``, one per row (finished rows may get anything, e.g. pad)."""
        self._pending = tokens.to(self._mask.device).view(-1, 1)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)


@torch.no_grad()
def sample_token_ids(
    model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    settings: GenerationSettings,
    generators: Sequence[torch.Generator],
    *,
    eos_id: int,
    pad_id: int,
) -> list[list[int]]:
    """Responses to ``contexts`` (ids, ``bos`` included), one batch, ``model`` in eval mode.

    Row ``r`` stops after ``eos_id`` (kept) or ``budgets[r]`` tokens; uses ``generators[r]``.
    """
    decoder = IncrementalDecoder(model, contexts, pad_id)
    responses: list[list[int]] = [[] for _ in contexts]
    done = [budget <= 0 for budget in budgets]
    while not all(done):
        logits = decoder.logits()
        uniforms = torch.zeros(len(contexts), dtype=torch.float64)
        if not settings.greedy:
            uniforms = draw_uniforms(generators)
        tokens = choose_tokens(logits, settings, uniforms).tolist()
        for row, token in enumerate(tokens):
            if done[row]:
                tokens[row] = pad_id
                continue
            responses[row].append(token)
            done[row] = token == eos_id or len(responses[row]) >= budgets[row]
        decoder.append(torch.tensor(tokens, dtype=torch.long))
    return responses


def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: GenerationSettings,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[list[int]]:
    """Sample one response per prompt; token ids of the response only.

    Each prompt is encoded as ``[bos] + prompt`` (:func:`encode_prompt`), cut by
    :func:`fit_context` when ``max_length`` is given, and decoded with ``settings``
    (temperature 0 = greedy). A response ends at the first ``eos`` -- which it then includes --
    or after its budget of tokens (then it has no ``eos``). The model runs in ``eval()`` under
    ``no_grad`` and gets its train/eval mode back afterwards.

    Determinism: the same ``generator`` state (or global seed when ``None``) gives the same
    responses for any ``batch_size``; ``generator`` advances by one ``randint`` of
    ``len(prompts)`` values.

    Returns:
        ``len(prompts)`` lists of ints, each ``1 <= len <= max_new_tokens``.
    """
    contexts = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    return sample_from_contexts(
        model,
        tokenizer,
        contexts,
        settings,
        generator=generator,
        batch_size=batch_size,
        max_length=max_length,
    )[1]


def sample_from_contexts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    generator: torch.Generator | None,
    batch_size: int,
    max_length: int | None,
) -> tuple[list[list[int]], list[list[int]]]:
    """:func:`sample_responses` for ``[bos] + prompt`` id lists -> ``(kept contexts, responses)``.

    ``kept contexts`` are the contexts after :func:`fit_context`, each the exact prefix its
    response was sampled after.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _, eos, pad = special_ids(tokenizer)
    fitted = [fit_context(list(c), settings.max_new_tokens, max_length) for c in contexts]
    kept = [context for context, _ in fitted]
    generators = row_generators(len(kept), generator)
    was_training = model.training
    model.eval()
    responses: list[list[int]] = []
    try:
        for start in range(0, len(kept), batch_size):
            stop = start + batch_size
            responses += sample_token_ids(
                model,
                kept[start:stop],
                [budget for _, budget in fitted[start:stop]],
                settings,
                generators[start:stop],
                eos_id=eos,
                pad_id=pad,
            )
    finally:
        model.train(was_training)
    return kept, responses


def decode_responses(tokenizer: PreTrainedTokenizerBase, responses: list[list[int]]) -> list[str]:
    """Response texts: ids up to the first ``eos``, special tokens skipped, whitespace stripped.

    The same text :func:`ml.evaluation.generation.greedy_generate` returns for the same ids.
    """
    _, eos, _ = special_ids(tokenizer)
    texts = []
    for ids in responses:
        ids = ids[: ids.index(eos)] if eos in ids else ids
        texts.append(str(tokenizer.decode(ids, skip_special_tokens=True)).strip())
    return texts
