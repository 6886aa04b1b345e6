"""The "value" half of locate-then-edit: find the vector that, added to a module's output at the
subject's last token, makes the model say ``target_new``.

ROME (Meng et al. 2022, Sec. 3.1 step 2, eq. 4) optimises ``δ`` added to the MLP output at the
edited layer; MEMIT (Meng et al. 2023, Sec. 4.3 eq. 16) adds it to the residual stream at the
last edited layer. Both minimise the target's negative log-likelihood, plus a KL term that keeps
the model's next-token distribution after the bare subject (its "essence", ROME eq. 4), plus a
weight decay ``||δ|| / r²`` (as in ROME's released code) and ``||δ|| ≤ clamp_norm · r``. ROME
takes ``r = ||o||``, the original output at that token; a small model's output at some subject
tokens is near zero, which would pin ``δ`` there, so ``r`` is ``max(||o||, the mean output norm
over all tokens of the batch)``.

**Searching through the update** (``through_update``, the default): the published search adds
``δ`` at the subject's last token only, but the closed-form update that follows changes the
projection's output at *every* token whose key overlaps the edited one (``ΔW x = δ · sᵀx`` with
``s = C⁻¹k* / (k*ᵀC⁻¹k*)`` for ROME). On the 4-layer facts model that spill-over undid the edit
for a sixth of the requests whose search had converged (docs/BENCHMARKS.md "Knowledge editing").
With ``through_update`` the search applies ``δ`` the way the update will: a hook on each edited
projection adds ``(x · S) δ`` at every token, ``S (in, N)`` the map from keys to per-request
weights (:class:`UpdateSpread`), so the ``δ`` found is the one the edited model realises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.locate import add_to_output, subject_last_token
from ml.editing.metrics import answer_ids, prompt_ids, right_padded
from ml.editing.requests import EditRequest


@dataclass
class RewriteRows:
    """Token rows ``[bos] + context(prompt) + target_new`` for every (request, context).

    ``input_ids``/``attention_mask`` ``(R, T)``; ``labels`` ``(R, T)`` the target ids at their
    positions, -100 elsewhere (unshifted); ``rows``/``positions`` ``(R,)`` the subject's last
    token of each row; ``request`` ``(R,)`` which request a row belongs to.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    positions: Tensor
    request: Tensor

    @property
    def rows(self) -> Tensor:
        return torch.arange(self.input_ids.shape[0])


def rewrite_rows(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    contexts: Sequence[str] = ("{}",),
) -> RewriteRows:
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    positions: list[int] = []
    owners: list[int] = []
    for index, request in enumerate(requests):
        target = answer_ids(tokenizer, request.target_new)
        for context in contexts:
            prompt = context.format(request.prompt)
            ids = prompt_ids(tokenizer, prompt)
            rows.append(ids + target)
            labels.append([-100] * len(ids) + target)
            positions.append(subject_last_token(tokenizer, prompt, request.subject))
            owners.append(index)
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    input_ids, mask, _ = right_padded(rows, pad)
    label_ids, _, _ = right_padded(labels, -100)
    return RewriteRows(input_ids, mask, label_ids, torch.tensor(positions), torch.tensor(owners))


def essence_rows(
    tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
) -> tuple[Tensor, Tensor, Tensor]:
    """``[bos] + subject`` rows, their last positions, and each row's request index."""
    rows = [prompt_ids(tokenizer, request.subject) for request in requests]
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    ids, mask, lengths = right_padded(rows, pad)
    return ids, mask, lengths - 1


@dataclass
class ValueSearchParams:
    """ROME publishes weight_decay 0.5 and clamp 4 for GPT-2 XL; on the 4-layer facts model those
    stop the search short (docs/BENCHMARKS.md "Knowledge editing"), hence the looser defaults."""

    steps: int = 200
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.001
    clamp_norm: float = 20.0
    stop_nll: float = 0.05
    contexts: tuple[str, ...] = ("{}",)
    through_update: bool = True


@dataclass
class UpdateSpread:
    """How a value shift ``δ (N, D)`` reaches every token once the closed-form update is made.

    ``sites`` pairs an edited projection with ``S (in, N)``: that projection's output at a token
    whose input is ``x (in,)`` moves by ``(x · S) δ`` — ROME: ``S = C⁻¹k* / (k*ᵀC⁻¹k*)``
    (``N = 1``); MEMIT, one layer of ``L``: ``S = (λC₀ + KKᵀ)⁻¹ K / L``.
    """

    sites: list[tuple[nn.Module, Tensor]] = field(default_factory=list)


@contextmanager
def add_through_update(spread: UpdateSpread, delta: Tensor) -> Iterator[None]:
    """Hooks adding ``(x · S) δ`` to each spread site's output, at every token."""

    def hook_for(scales: Tensor) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            weights = args[0].float() @ scales.to(args[0].device)  # (B, T, N)
            return output + (weights @ delta).to(output.dtype)

        return hook

    with ExitStack() as stack:
        for module, scales in spread.sites:
            stack.callback(module.register_forward_hook(hook_for(scales)).remove)
        yield


def _output_at(
    model: PreTrainedModel, module: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor
) -> Tensor:
    return _outputs(model, module, ids, mask, positions)[0]


def _outputs(
    model: PreTrainedModel, module: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor
) -> tuple[Tensor, Tensor]:
    """The module's output at ``(row i, positions[i])`` ``(R, D)`` and the mean output norm
    over every real token (a scalar)."""
    captured: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _a: object, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        assert isinstance(hidden, Tensor)
        captured["out"] = hidden

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    out = captured["out"].detach().float()
    typical = out.norm(dim=-1)[mask.bool()].mean()
    return out[torch.arange(len(positions)), positions], typical


def search_values(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    module: nn.Module,
    params: ValueSearchParams,
    spread: UpdateSpread | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Optimise one ``δ`` per request added to ``module``'s output at the subject's last token
    (or, with ``spread``, through the update at every token: module docstring).

    Returns ``(delta (N, D), original_output (N, D), final target NLL)``; ``original_output`` is
    the module's output at the subject's last token of the bare prompt (first context). The
    model's weights are not changed (only ``δ`` has a gradient).
    """
    device = next(model.parameters()).device
    batch = rewrite_rows(tokenizer, requests, params.contexts)
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    labels = batch.labels.to(device)
    first_row = [i * len(params.contexts) for i in range(len(requests))]
    outputs, typical = _outputs(model, module, ids, mask, batch.positions.to(device))
    original = outputs[first_row]
    reference = original.norm(dim=-1, keepdim=True).clamp_min(float(typical))
    e_ids, e_mask, e_pos = essence_rows(tokenizer, requests)
    e_ids, e_mask = e_ids.to(device), e_mask.to(device)
    with torch.no_grad():
        logits = model(input_ids=e_ids, attention_mask=e_mask).logits
        essence_before = F.log_softmax(logits[torch.arange(len(requests)), e_pos].float(), -1)
    delta = torch.zeros_like(original, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=params.lr)
    limits = params.clamp_norm * reference
    was_training = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in was_training:
        p.requires_grad_(False)
    nll_value = float("inf")
    rows, positions, owners = (t.to(device) for t in (batch.rows, batch.positions, batch.request))
    e_rows, e_positions = torch.arange(len(requests), device=device), e_pos.to(device)

    def shifted(at_rows: Tensor, at_positions: Tensor, values: Tensor) -> Any:
        """``δ`` where the edit will put it: at every token through the update (``spread``),
        or ``values`` at each row's subject token (the published search)."""
        if spread is not None:
            return add_through_update(spread, delta)
        return add_to_output(module, at_rows, at_positions, values)

    try:
        # steps + 1 passes: the last one only measures, so the NLL returned is the final δ's
        for step in range(params.steps + 1):
            optimizer.zero_grad()
            with shifted(rows, positions, delta[owners]):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
            nll_value = float(nll.detach())
            if nll_value < params.stop_nll or step == params.steps:
                break
            loss = nll
            if params.kl_factor > 0:
                with shifted(e_rows, e_positions, delta):
                    e_logits = model(input_ids=e_ids, attention_mask=e_mask).logits.float()
                essence_after = F.log_softmax(e_logits[torch.arange(len(requests)), e_pos], -1)
                kl = F.kl_div(essence_after, essence_before, log_target=True, reduction="batchmean")
                loss = loss + params.kl_factor * kl
            decay = (delta.norm(dim=-1) / reference[:, 0] ** 2).mean()
            loss = loss + params.weight_decay * decay
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                norms = delta.norm(dim=-1, keepdim=True)
                delta.mul_(torch.clamp(limits / norms.clamp_min(1e-12), max=1.0))
    finally:
        for p, flag in was_training:
            p.requires_grad_(flag)
    return delta.detach(), original, nll_value
