"""Fully sharded students (``resources.strategy: fsdp``) for :class:`DistillRecipe`.

With FSDP (PyTorch's ``fully_shard``, "FSDP2": Zhao et al. 2023, "PyTorch FSDP: Experiences on
Scaling Fully Sharded Data Parallel") each rank keeps ``1 / world_size`` of every student
parameter, of its gradient and of its AdamW state; a decoder layer's full weights exist only
while that layer runs (all-gathered before its forward and backward, freed after). Gradients
are reduce-scattered in backward with the divide factor set to 1, so, as with
:meth:`ml.distillation.distributed.World.sum_gradients`, each rank's shard holds the *sum*
over ranks and the recipe's division by the global token count gives the one-process gradient.

Every sharded forward is a collective: all ranks must run the same number of them, in the same
order. The recipe therefore gives a rank whose share of a micro-batch is empty a zero-weighted
stand-in example, and evaluates on every rank.

Checkpoints stay in the one-process format (:mod:`ml.distillation.checkpointing`): full
weights and an optimizer state keyed by parameter index, gathered to rank 0 (CPU) by
:func:`gather_full_state`, so a checkpoint of an FSDP job resumes on one process, on DDP ranks
or on FSDP ranks alike. The teacher is replicated (frozen, no optimizer state to shard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.optim import Optimizer
from transformers import AutoModelForCausalLM, PreTrainedModel


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, found from the architecture (LLaMA ``model.layers``,
    GPT-2 ``transformer.h``, ...): the largest ``nn.ModuleList`` in the model."""
    lists: list[nn.ModuleList] = [
        m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0
    ]
    if not lists:
        raise ValueError("FSDP needs a model with a list of decoder layers; none was found")

    sizes = [sum(p.numel() for p in blocks.parameters()) for blocks in lists]
    return list(lists[sizes.index(max(sizes))])


def shard_student(model: nn.Module) -> FSDPModule:
    """Shard ``model`` in place over the default process group: one FSDP unit per decoder
    layer, the rest (embeddings, final norm, head) in the root unit. Call after every rank
    holds the same weights and before the optimizer is built (parameters become DTensors)."""
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    assert isinstance(model, FSDPModule)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Sum, not mean, over ranks: the recipe already divides by the global token count.
            # Plain SUM collectives (gloo has no PREMUL_SUM, which a divide factor asks for).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class FullState:
    """Rank 0's CPU copy of the whole training state (None parts on other ranks).

    ``model``: parameter and buffer name -> tensor, tied parameters once. ``optimizer``: the
    one-process ``optimizer.state_dict()`` shape (state keyed by parameter index)."""

    model: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None


def gather_full_state(model: nn.Module, optimizer: Optimizer | None) -> FullState:
    """All-gather the sharded ``model`` (and ``optimizer``) into rank 0's memory. Collective:
    every rank calls it at the same point."""
    weights = get_model_state_dict(model, options=_FULL)
    optim = None
    if optimizer is not None:
        by_name = get_optimizer_state_dict(model, optimizer, options=_FULL)
        optim = _by_index(by_name) if by_name.get("param_groups") else None
    if not weights:  # ranks > 0 get empty dicts with cpu_offload
        return FullState(model=None, optimizer=None)
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    return FullState(model=_untied(model, tensors), optimizer=optim)


def load_full_state(
    model: nn.Module, optimizer: Optimizer | None, state: FullState, param_names: list[str]
) -> None:
    """Load a full (one-process format) state into the sharded ``model``/``optimizer``; each
    rank keeps its shard. ``param_names``: the trainable parameters' names in optimizer order
    (``named_parameters`` order of the unsharded model). Collective."""
    assert state.model is not None
    options = StateDictOptions(full_state_dict=True, strict=False)
    result = set_model_state_dict(model, dict(state.model.items()), options=options)  # type: ignore[arg-type]
    _check_loaded(model, result.missing_keys)
    if optimizer is not None and state.optimizer is not None:
        by_name = _by_name(state.optimizer, param_names)
        set_optimizer_state_dict(model, optimizer, by_name, options=options)


def _untied(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second name of a tied parameter (``lm_head.weight`` tied to the embedding):
    safetensors stores a tensor once, as ``safetensors.torch.save_model`` does."""
    seen: dict[int, str] = {}
    keep: dict[str, torch.Tensor] = {}
    names = dict(model.named_parameters(remove_duplicate=False))
    for key, tensor in weights.items():
        param = names.get(key)
        if param is not None and id(param) in seen:
            continue
        if param is not None:
            seen[id(param)] = key
        keep[key] = tensor
    return keep


def _check_loaded(model: nn.Module, missing: list[str]) -> None:
    """A key may be missing only as the second name of a tied parameter."""
    named = dict(model.named_parameters(remove_duplicate=False))
    unique = {id(p): name for name, p in model.named_parameters()}
    really = [k for k in missing if k not in named or unique.get(id(named[k])) == k]
    if really:
        raise ValueError(f"checkpoint lacks weights for {', '.join(sorted(really)[:5])}")


def _by_index(state: dict[str, Any]) -> dict[str, Any]:
    """Name-keyed optimizer state (``get_optimizer_state_dict``) -> ``optimizer.state_dict()``
    shape: parameters numbered in param-group order, as one process numbers them."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            index[name] = len(index)
            ids.append(index[name])
        groups.append({**group, "params": ids})
    return {
        "state": {index[name]: values for name, values in state["state"].items()},
        "param_groups": groups,
    }


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`_by_index` for the parameters ``names`` (optimizer order)."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {
        "state": {names[int(i)]: values for i, values in state["state"].items()},
        "param_groups": groups,
    }


def checkpoint_sources(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, gathered: FullState | None
) -> dict[str, Any]:
    """``write_checkpoint``'s weight and optimizer arguments: live objects, or the gathered
    state of a sharded student."""
    if gathered is None:
        return {"model": model, "optimizer": optimizer}
    return {"weights": gathered.model, "optimizer_state": gathered.optimizer}


def unsharded_copy(student: nn.Module, weights: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A plain CPU model of ``student``'s architecture holding ``weights`` (tied names once)."""
    copy = AutoModelForCausalLM.from_config(student.config)
    missing, unexpected = copy.load_state_dict(weights, strict=False)
    tied = set(getattr(copy, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise ValueError(f"gathered weights do not fit the student: {missing} {unexpected}")
    copy.tie_weights()
    return copy
