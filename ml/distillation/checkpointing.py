"""Pickle-free training checkpoints: safetensors for tensors, JSON for everything else.

Layout of ``<checkpoint_dir>/step_{N:08d}/``::

    model.safetensors       student weights (tied tensors stored once, safetensors.torch.save_model)
    optimizer.safetensors   optimizer state tensors, keys ``state.{param_index}.{name}``
    optimizer.json          param_groups and non-tensor state values
    trainer_state.json      step, epoch, position, scheduler, python ``random`` state, fingerprint
    rng.safetensors         torch CPU RNG (uint8) and ``cuda.{i}`` RNG states

A checkpoint is written into a hidden temporary sibling and renamed into place, so a reader
(or a resumed job) never sees half a checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch.optim import Optimizer

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.safetensors"


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after optimizer step ``step``."""
    return f"step_{step:08d}"


def _optimizer_to_flat(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors keyed ``state.{index}.{name}``, JSON metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {"param_groups": state_dict["param_groups"], "scalar_state": scalars}
    return tensors, meta


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_optimizer_to_flat`: an ``optimizer.state_dict()``-shaped dict."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta.get("scalar_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = cuda_state.cpu()
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda_states = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def python_random_state_to_json() -> list[Any]:
    """``random.getstate()`` as JSON-able lists."""
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]


def python_random_state_from_json(value: list[Any]) -> None:
    """Inverse of :func:`python_random_state_to_json`, applied to the global ``random``."""
    version, internal, gauss_next = value
    random.setstate((version, tuple(internal), gauss_next))


class CheckpointDiskFull(OSError):
    """The checkpoint's filesystem is full (ENOSPC). Its message names ENOSPC and the step."""


def _is_disk_full(exc: BaseException) -> bool:
    # safetensors raises its own error type (not an OSError) that carries the OS error text.
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return "No space left on device" in str(exc) or "os error 28" in str(exc)


def write_checkpoint(
    checkpoint_dir: Path,
    step: int,
    *,
    model: torch.nn.Module | None = None,
    optimizer: Optimizer | None = None,
    trainer_state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a full checkpoint for ``step`` atomically and return its final directory.

    The weights come from ``model`` or, already gathered (a sharded student's, see
    :mod:`ml.distillation.sharding`), from ``weights`` (tied tensors once); the optimizer state
    from ``optimizer`` or ``optimizer_state`` (the ``optimizer.state_dict()`` shape).
    ``trainer_state`` must be JSON-serialisable; the python ``random`` state is added here.
    """
    if (model is None) == (weights is None) or (optimizer is None) == (optimizer_state is None):
        raise ValueError("pass exactly one of model/weights and one of optimizer/optimizer_state")
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / checkpoint_name(step)
    temporary = checkpoint_dir / f".{checkpoint_name(step)}.tmp-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        if model is not None:
            save_model(model, str(temporary / MODEL_FILE))
        else:
            assert weights is not None
            save_file({k: v.contiguous() for k, v in weights.items()}, str(temporary / MODEL_FILE))
        if optimizer is not None:
            optimizer_state = optimizer.state_dict()
        assert optimizer_state is not None
        tensors, meta = _optimizer_to_flat(optimizer_state)
        save_file(tensors, str(temporary / OPTIMIZER_TENSORS_FILE))
        (temporary / OPTIMIZER_META_FILE).write_text(json.dumps(meta), encoding="utf-8")
        state = dict(trainer_state, python_random=python_random_state_to_json())
        (temporary / TRAINER_STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        save_file(_rng_tensors(), str(temporary / RNG_FILE))
    except Exception as exc:
        # Half a checkpoint is never left behind, and earlier checkpoints are not touched.
        shutil.rmtree(temporary, ignore_errors=True)
        if _is_disk_full(exc):
            raise CheckpointDiskFull(
                errno.ENOSPC,
                f"ENOSPC: no space left on device writing the checkpoint of step {step} under "
                f"{checkpoint_dir}; the partial write was removed, earlier checkpoints are intact",
            ) from exc
        raise
    if final.exists():
        # Re-running a step after a resume rewrites its checkpoint with identical content.
        shutil.rmtree(final)
    os.replace(temporary, final)
    return final


def _check_complete(path: Path) -> None:
    missing = [
        name
        for name in (MODEL_FILE, OPTIMIZER_TENSORS_FILE, OPTIMIZER_META_FILE, TRAINER_STATE_FILE)
        if not (path / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is missing {missing}")


def _optimizer_state(path: Path) -> dict[str, Any]:
    meta = json.loads((path / OPTIMIZER_META_FILE).read_text(encoding="utf-8"))
    return _optimizer_from_flat(load_file(str(path / OPTIMIZER_TENSORS_FILE)), meta)


def read_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: Optimizer) -> dict[str, Any]:
    """Restore model, optimizer, torch and python RNG from ``path``; return the trainer state.

    The caller restores what the trainer state describes (scheduler, data position).
    """
    path = Path(path)
    _check_complete(path)
    device = next(model.parameters()).device
    missing_keys, unexpected = load_model(model, str(path / MODEL_FILE), device=str(device))
    if missing_keys or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: {missing_keys} {unexpected}")
    # load_state_dict moves state tensors to each parameter's device and dtype rules.
    optimizer.load_state_dict(_optimizer_state(path))
    return _trainer_state(path)


def read_checkpoint_tensors(
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(weights, optimizer_state, trainer_state)`` of ``path`` on the CPU, for a sharded
    student that loads them itself (:func:`ml.distillation.sharding.load_full_state`); torch
    and python RNG are restored here as by :func:`read_checkpoint`."""
    path = Path(path)
    _check_complete(path)
    weights = load_file(str(path / MODEL_FILE))
    return weights, _optimizer_state(path), _trainer_state(path)


def _trainer_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    if "python_random" in state:
        python_random_state_from_json(state["python_random"])
    if (path / RNG_FILE).is_file():
        _restore_rng(load_file(str(path / RNG_FILE)))
    return state


def directory_sha256(path: Path) -> tuple[str, int]:
    """(sha256, bytes) over every file under ``path``: relative names and contents, sorted by
    name. A checkpoint's identity: the worker records it, and whoever reads the checkpoint
    again (a resume, a job started from it) recomputes it first."""
    digest, size = hashlib.sha256(), 0
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The highest-step complete checkpoint under ``checkpoint_dir``, or None."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    candidates = sorted(
        p for p in checkpoint_dir.glob("step_*") if (p / TRAINER_STATE_FILE).is_file()
    )
    return candidates[-1] if candidates else None
