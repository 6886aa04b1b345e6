"""Find where an edit goes: the decoder layers and each layer's MLP output projection.

Found by introspection, never by hard-coded full names: the decoder layers are the
``nn.ModuleList`` whose length is the config's layer count; a layer's MLP is its child named
``mlp`` / ``feed_forward`` / ``ffn``; the output projection is the one ``nn.Linear`` or GPT-2
``Conv1D`` child of the MLP that maps the intermediate width back to the hidden width
(LLaMA ``down_proj``, GPT-2 ``c_proj``). ``Conv1D`` stores its weight as ``(in, out)``, the
transpose of ``nn.Linear``; :class:`ProjectionSite` hides that: every editing method works on
``W`` of shape ``(out, in)`` so that ``output = W @ key``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

MLP_NAMES = ("mlp", "feed_forward", "ffn")


class EditingError(ValueError):
    """An edit cannot be made as asked; ``field`` names the spec field at fault
    (``"method.params.layers"``, ``"model"``, ``"requests"`` ...)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class UnsupportedArchitectureError(EditingError):
    def __init__(self, message: str) -> None:
        super().__init__("model", message)


class LayerOutOfRangeError(EditingError):
    def __init__(self, layer: int, num_layers: int, field: str = "method.params.layers") -> None:
        super().__init__(field, f"layer {layer} is outside the model's 0..{num_layers - 1}")


@dataclass
class ProjectionSite:
    """The MLP output projection of one decoder layer.

    ``name`` is the module's full name in the model (found, not assumed); ``weight_name`` the
    parameter's name in ``model.named_parameters()``.
    """

    layer: int
    name: str
    module: nn.Module
    transposed: bool  # True for GPT-2 Conv1D: stored weight is (in, out)
    in_features: int
    out_features: int

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def parameter(self) -> nn.Parameter:
        weight = self.module.weight
        assert isinstance(weight, nn.Parameter)
        return weight

    def weight_out_in(self) -> Tensor:
        """A float32 copy of the weight as ``(out, in)``."""
        weight = self.parameter.detach().float()
        return weight.t().clone() if self.transposed else weight.clone()

    def stored_delta(self, delta_out_in: Tensor) -> Tensor:
        """``delta_out_in`` (out, in) laid out like the stored weight."""
        return delta_out_in.t() if self.transposed else delta_out_in

    @torch.no_grad()
    def add_(self, delta_out_in: Tensor) -> None:
        weight = self.parameter
        weight.add_(self.stored_delta(delta_out_in).to(weight.dtype))


def num_layers(model: PreTrainedModel) -> int:
    config = model.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise UnsupportedArchitectureError(
        f"{type(model).__name__}: the config names no layer count (num_hidden_layers / n_layer)"
    )


def decoder_layers(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """``(name, ModuleList)`` of the decoder layers."""
    count = num_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise UnsupportedArchitectureError(
        f"{type(model).__name__}: no module list of {count} decoder layers found"
    )


def _projection_of(mlp: nn.Module, hidden: int) -> tuple[str, nn.Module, bool, int, int]:
    found = []
    for child_name, child in mlp.named_children():
        # a wrapper (the GRACE codebook) exposes the projection it wraps as ``inner``
        inner = getattr(child, "inner", child)
        if isinstance(inner, nn.Linear):
            in_f, out_f, transposed = inner.in_features, inner.out_features, False
        elif isinstance(inner, Conv1D):
            in_f, out_f = inner.weight.shape
            transposed = True
        else:
            continue
        if out_f == hidden and in_f != hidden:
            found.append((child_name, child, transposed, int(in_f), int(out_f)))
    if len(found) != 1:
        names = [f[0] for f in found]
        raise UnsupportedArchitectureError(
            f"expected one MLP output projection (intermediate -> hidden), found {names}"
        )
    return found[0]


def hidden_size(model: PreTrainedModel) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(model.config, key, None)
        if isinstance(value, int):
            return value
    raise UnsupportedArchitectureError("the config names no hidden size")


def projection_site(
    model: PreTrainedModel, layer: int, field: str = "method.params.layers"
) -> ProjectionSite:
    """The MLP output projection of decoder layer ``layer`` (negative counts from the end)."""
    layers_name, layers = decoder_layers(model)
    count = len(layers)
    if not -count <= layer < count:
        raise LayerOutOfRangeError(layer, count, field)
    index = layer % count
    block = layers[index]
    for mlp_name in MLP_NAMES:
        mlp = getattr(block, mlp_name, None)
        if isinstance(mlp, nn.Module):
            break
    else:
        raise UnsupportedArchitectureError(
            f"{type(block).__name__} has no MLP child named one of {MLP_NAMES}"
        )
    child, module, transposed, in_f, out_f = _projection_of(mlp, hidden_size(model))
    name = f"{layers_name}.{index}.{mlp_name}.{child}"
    return ProjectionSite(index, name, module, transposed, in_f, out_f)


def layer_module(model: PreTrainedModel, layer: int) -> nn.Module:
    _, layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise LayerOutOfRangeError(layer, len(layers))
    return layers[layer]


def subject_last_token(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str) -> int:
    """Index, in ``[bos] + prompt`` ids, of the subject's last token (first occurrence)."""
    start = prompt.find(subject)
    if start < 0:
        raise EditingError("requests.subject", f"{subject!r} does not occur in {prompt!r}")
    prefix = prompt[: start + len(subject)]
    return len(tokenizer.encode(prefix, add_special_tokens=False))  # +1 bos, -1 for index


@contextmanager
def capture_input(module: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the (first positional) input of ``module`` on each forward in ``store["input"]``."""
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        store["input"] = args[0]

    handle = module.register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def add_to_output(
    module: nn.Module, rows: Tensor, positions: Tensor, delta: Tensor
) -> Iterator[None]:
    """Add ``delta`` (``(D,)`` or ``(B, D)``) to the module's output (hidden part, for decoder
    layers that return tuples) at ``(rows[i], positions[i])``."""

    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        shift = torch.zeros_like(hidden)
        shift[rows, positions] = delta.to(hidden.dtype).expand(len(rows), -1)
        hidden = hidden + shift
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
