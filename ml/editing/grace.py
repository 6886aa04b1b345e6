"""GRACE (Hartvigsen et al. 2023, "Aging with GRACE: Lifelong Model Editing with Discrete
Key-Value Adaptors", Sec. 3 and Alg. 1): a codebook wrapped around one layer's MLP output
projection. The weights never change.

At every token the projection's input ``h`` is compared with the codebook's keys; if the nearest
key ``k_i`` is within its deferral radius ``ε_i`` (``||h − k_i|| < ε_i``) the projection's output
is replaced by the stored value ``v_i``, otherwise the layer runs as before. An edit reads the
key at the prompt's last token, learns a value that makes the model emit ``target_new``, and
updates the codebook: a new entry with radius ``init_radius`` when no key is near; if the nearest
key is within ``ε_i + init_radius`` and has the same answer, its radius grows to cover the new
key; with a different answer both radii shrink to half the distance (split).

The codebook is saved as safetensors (``keys``, ``values``, ``radii``; the layer, the wrapped
module's name and the answers in the metadata) and undone by :func:`detach_grace`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.locate import capture_input, projection_site
from ml.editing.metrics import answer_ids, prompt_ids
from ml.editing.requests import EditRequest


@dataclass
class GraceParams:
    layer: int = 2
    init_radius: float = 1.0
    steps: int = 60
    lr: float = 0.5
    stop_nll: float = 0.02


class GraceAdaptor(nn.Module):
    """Wraps ``inner`` (a projection); keys ``(N, in)``, values ``(N, out)``, radii ``(N,)``."""

    keys: Tensor
    values: Tensor
    radii: Tensor

    def __init__(self, inner: nn.Module, layer: int, name: str, in_f: int, out_f: int) -> None:
        super().__init__()
        self.inner = inner
        self.layer = layer
        self.wrapped_name = name
        self.register_buffer("keys", torch.zeros(0, in_f))
        self.register_buffer("values", torch.zeros(0, out_f))
        self.register_buffer("radii", torch.zeros(0))
        self.answers: list[str] = []
        self.forced: tuple[Tensor, Tensor, Tensor] | None = None  # (rows, positions, values)

    @property
    def weight(self) -> Any:  # so that locate still sees the wrapped projection
        return self.inner.weight

    def forward(self, hidden: Tensor) -> Tensor:
        output = self.inner(hidden)
        if self.forced is not None:
            rows, positions, values = self.forced
            output = output.clone()
            output[rows, positions] = values.to(output.dtype)
            return output
        if self.keys.shape[0] == 0:
            return output
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        distances = torch.cdist(flat, self.keys.float())  # (B*T, N)
        nearest, index = distances.min(dim=-1)
        hit = nearest < self.radii[index]
        if not bool(hit.any()):
            return output
        replaced = output.reshape(-1, output.shape[-1]).clone()
        replaced[hit] = self.values[index[hit]].to(output.dtype)
        return replaced.reshape(output.shape)

    def add_entry(self, key: Tensor, value: Tensor, answer: str, radius: float) -> None:
        """Alg. 1 of the paper: add, expand or split."""
        key, value = key.float().to(self.keys.device), value.float().to(self.values.device)
        if self.keys.shape[0]:
            distances = (self.keys - key).norm(dim=-1)
            distance, index = distances.min(dim=0)
            i, d = int(index), float(distance)
            if d < float(self.radii[i]) + radius:
                if self.answers[i] == answer:
                    self.radii[i] = max(float(self.radii[i]), d + radius / 2)
                    return
                self.radii[i] = d / 2
                radius = d / 2
        self.keys = torch.cat([self.keys, key[None]])
        self.values = torch.cat([self.values, value[None]])
        self.radii = torch.cat([self.radii, torch.tensor([radius], device=self.radii.device)])
        self.answers.append(answer)


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr


def attach_grace(model: PreTrainedModel, layer: int) -> GraceAdaptor:
    """The model's adaptor at ``layer``, wrapping the MLP output projection (created once)."""
    site = projection_site(model, layer, "method.params.layer")
    if isinstance(site.module, GraceAdaptor):
        return site.module
    for module in model.modules():
        if isinstance(module, GraceAdaptor):
            raise ValueError(f"the model already has a GRACE codebook at layer {module.layer}")
    adaptor = GraceAdaptor(site.module, site.layer, site.name, site.in_features, site.out_features)
    adaptor.to(site.parameter.device)
    parent, attr = _parent_and_attr(model, site.name)
    setattr(parent, attr, adaptor)
    return adaptor


def find_grace(model: nn.Module) -> GraceAdaptor | None:
    for module in model.modules():
        if isinstance(module, GraceAdaptor):
            return module
    return None


def detach_grace(model: PreTrainedModel) -> None:
    """Undo GRACE: put the wrapped projection back (no-op without a codebook)."""
    adaptor = find_grace(model)
    if adaptor is not None:
        parent, attr = _parent_and_attr(model, adaptor.wrapped_name)
        setattr(parent, attr, adaptor.inner)


def apply_grace(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    params: GraceParams,
) -> dict[str, float]:
    """One GRACE edit: learn the value at the prompt's last token, then update the codebook."""
    adaptor = attach_grace(model, params.layer)
    device = next(model.parameters()).device
    prompt, target = (
        prompt_ids(tokenizer, request.prompt),
        answer_ids(tokenizer, request.target_new),
    )
    ids = torch.tensor([prompt + target], device=device)
    labels = torch.tensor([[-100] * len(prompt) + target], device=device)
    position = torch.tensor([len(prompt) - 1], device=device)
    saved_keys = adaptor.keys
    adaptor.keys = adaptor.keys[:0]  # the value is learnt against the unedited layer
    with torch.no_grad(), capture_input(adaptor) as store:
        model(input_ids=ids)
    key = store["input"][0, len(prompt) - 1].detach().float()
    with torch.no_grad():
        value = adaptor.inner(key[None].to(adaptor.weight.dtype))[0].float().clone()
    value.requires_grad_(True)
    optimizer = torch.optim.Adam([value], lr=params.lr)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    nll_value = float("inf")
    try:
        for _ in range(params.steps):
            optimizer.zero_grad()
            adaptor.forced = (torch.tensor([0], device=device), position, value[None])
            logits = model(input_ids=ids).logits.float()
            nll = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
            nll_value = float(nll.detach())
            if nll_value < params.stop_nll:
                break
            nll.backward()
            optimizer.step()
    finally:
        adaptor.forced = None
        adaptor.keys = saved_keys
        for p, flag in flags:
            p.requires_grad_(flag)
    adaptor.add_entry(key, value.detach(), request.target_new, params.init_radius)
    return {"nll": nll_value, "codebook_size": float(adaptor.keys.shape[0])}


def save_codebook(adaptor: GraceAdaptor, path: Path) -> None:
    """Write the codebook as safetensors; the metadata holds layer, module name and answers."""
    metadata = {
        "layer": str(adaptor.layer),
        "wrapped_name": adaptor.wrapped_name,
        "answers": json.dumps(adaptor.answers),
    }
    tensors = {
        "keys": adaptor.keys.detach().cpu().contiguous(),
        "values": adaptor.values.detach().cpu().contiguous(),
        "radii": adaptor.radii.detach().cpu().contiguous(),
    }
    save_file(tensors, str(path), metadata=metadata)


def load_codebook(model: PreTrainedModel, path: Path) -> GraceAdaptor:
    """Attach a saved codebook to ``model`` (which must not have one) and return it."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    adaptor = attach_grace(model, int(metadata["layer"]))
    if adaptor.wrapped_name != metadata["wrapped_name"]:
        raise ValueError(
            f"codebook for {metadata['wrapped_name']}, model has {adaptor.wrapped_name}"
        )
    device = adaptor.keys.device
    adaptor.keys = tensors["keys"].to(device)
    adaptor.values = tensors["values"].to(device)
    adaptor.radii = tensors["radii"].to(device)
    adaptor.answers = list(json.loads(metadata["answers"]))
    return adaptor
