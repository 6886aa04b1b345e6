"""Load, save, inspect and initialise Hugging Face causal LMs — safetensors only.

Pickle-based weights can execute code on load, and ``auto_map`` in a config asks for remote
code; both are refused here, before anything is deserialised. ``trust_remote_code`` is always
False in this module.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ml.data.tokenizer import tokenizer_sha256

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# A GRACE-edited model (ml.editing.grace) is its plain weights plus this codebook, re-attached
# on load; it counts in the weights hash, so the edited model never passes for its base.
GRACE_CODEBOOK = "grace_codebook.safetensors"


class UnsafeModelError(ValueError):
    """The model directory cannot be loaded safely (pickle weights, remote code, no weights)."""


def check_model_dir(path: Path) -> None:
    """Raise :class:`UnsafeModelError` unless ``path`` holds safetensors weights and no code.

    Refused: a missing directory, no ``*.safetensors`` file, any pickle weight file
    (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.ckpt``), or a ``config.json`` with
    ``auto_map`` (which would make transformers import code from the directory).
    """
    path = Path(path)
    if not path.is_dir():
        raise UnsafeModelError(f"{path} is not a directory")
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeModelError(f"{path} contains pickle weights {pickles}; only safetensors load")
    if not any(path.glob("*.safetensors")):
        raise UnsafeModelError(f"{path} has no *.safetensors weights")
    config_path = path / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UnsafeModelError(f"{config_path} is not valid JSON: {error}") from error
        if isinstance(config, dict) and "auto_map" in config:
            raise UnsafeModelError(f"{config_path} has 'auto_map' (remote code is not allowed)")


def load_causal_lm(
    path: Path | str, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> PreTrainedModel:
    """Load a causal LM from a local directory after :func:`check_model_dir`.

    ``dtype=None`` keeps the dtype stored in the config. The model is returned in ``eval()``
    mode on ``device``.
    """
    check_model_dir(Path(path))
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype if dtype is not None else "auto",
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    )
    codebook = Path(path) / GRACE_CODEBOOK
    if codebook.is_file():
        from ml.editing.grace import load_codebook  # editing imports loading's neighbours

        load_codebook(model, codebook)
    model.to(device)  # type: ignore[arg-type]  # transformers wraps .to in a decorator
    model.eval()
    return model


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (never remote code)."""
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """``save_pretrained`` the model (safetensors) and its tokenizer into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))


@dataclass
class ModelInfo:
    """What a model directory holds, read from its config and safetensors headers only."""

    architecture: str
    model_type: str
    num_parameters: int
    vocab_size: int
    tokenizer_sha256: str | None
    num_layers: int | None
    weights_sha256: str


def weights_sha256(path: Path) -> str:
    """sha256 over the directory's ``*.safetensors`` files (names and bytes, sorted by name):
    two directories with the same weights hash equal wherever they live."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.safetensors")):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _count_safetensors_parameters(path: Path) -> int:
    # safe_open reads only the JSON header; get_slice(...).get_shape() touches no tensor data.
    total = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def inspect_model_dir(path: Path) -> ModelInfo:
    """Describe a model directory without loading its weights.

    ``num_parameters`` counts the elements stored in the ``*.safetensors`` files (a tied
    ``lm_head`` is stored once, matching ``model.num_parameters()``).
    """
    path = Path(path)
    check_model_dir(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    architectures = getattr(config, "architectures", None) or []
    tokenizer_file = path / "tokenizer.json"
    tok_hash = (
        tokenizer_sha256(Tokenizer.from_file(str(tokenizer_file)))
        if tokenizer_file.is_file()
        else None
    )
    num_layers = getattr(config, "num_hidden_layers", None)
    return ModelInfo(
        architecture=str(architectures[0]) if architectures else "",
        model_type=str(config.model_type),
        num_parameters=_count_safetensors_parameters(path),
        vocab_size=int(config.vocab_size),
        tokenizer_sha256=tok_hash,
        num_layers=int(num_layers) if num_layers is not None else None,
        weights_sha256=weights_sha256(path),
    )


def _decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no LLaMA-style 'model.layers' ModuleList; "
            "layer-copy initialisation supports that layout only"
        )
    return layers


def init_student_from_teacher(teacher: PreTrainedModel, every_k: int) -> PreTrainedModel:
    """Build a shallower student from teacher layers ``0, k, 2k, ...``.

    The student has ``ceil(L / k)`` layers and copies of the embeddings, the final norm, the
    ``lm_head`` and the chosen layers (the layer-copy initialisation of DistilBERT, Sanh et
    al. 2019). Weights are copied (not shared) and have the teacher's dtype.

    Raises:
        ValueError: ``every_k < 1`` or the model is not LLaMA-style (``model.layers``).
    """
    if every_k < 1:
        raise ValueError(f"every_k must be >= 1, got {every_k}")
    teacher_layers = len(_decoder_layers(teacher))
    kept = list(range(0, teacher_layers, every_k))
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == teacher_layers:
        config.layer_types = [layer_types[i] for i in kept]
    student = type(teacher)(config)
    student.to(next(teacher.parameters()).dtype)  # type: ignore[arg-type]
    teacher_state = teacher.state_dict()
    prefix = "model.layers."
    state: dict[str, torch.Tensor] = {}
    for name, tensor in teacher_state.items():
        if name.startswith(prefix):
            index_text, rest = name[len(prefix) :].split(".", 1)
            index = int(index_text)
            if index % every_k != 0:
                continue
            name = f"{prefix}{index // every_k}.{rest}"
        state[name] = tensor.detach().clone()
    student.load_state_dict(state, strict=True)
    return student


def init_student_from_config(
    config: dict[str, Any], *, vocab_size: int, model_type: str = "llama"
) -> PreTrainedModel:
    """Randomly initialise a causal LM of ``model_type`` from a config dict.

    The caller seeds ``torch`` beforehand; ``vocab_size`` overrides any value in ``config`` so
    the student matches the tokenizer.
    """
    values = {k: v for k, v in config.items() if k != "vocab_size"}
    hf_config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **values)
    return AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
