"""Teacher-logit cache, read side: format constants, settings, fingerprint, verified reader.

The cache is written by :func:`ml.distillation.teacher_cache.capture_teacher_targets` (whose
module docstring describes the on-disk format); import the public names from there. This module
holds everything that defines and checks the format, so the reader never trusts a directory it
has not verified against the caller's fingerprint (a mismatch raises :class:`CacheMismatch`,
never silently wrong targets).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from torch import Tensor

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_NAMES = ("token_ids", "weights", "entropy", "offsets")


class CacheMismatch(ValueError):
    """A cache directory does not hold the targets the caller expects; the message says why."""


@dataclass(frozen=True)
class CaptureSettings:
    """How sparse targets are drawn from the teacher's distribution at each response position.

    ``mode="topk"`` keeps the ``k`` most likely ids (biased; renormalised in the loss).
    ``mode="sampled"`` draws ``samples`` ids with replacement from
    ``r ~ p^(1/proposal_temperature)`` (RS-KD of Anshumann et al. 2025) with a
    ``torch.Generator`` seeded from ``seed`` and the example index.
    """

    mode: Literal["topk", "sampled"] = "topk"
    k: int = 64
    samples: int = 64
    proposal_temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Canonical types, so k=64.0 or proposal_temperature=1 fingerprint like 64 and 1.0.
        for name in ("k", "samples", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "proposal_temperature", float(self.proposal_temperature))
        if self.mode not in ("topk", "sampled"):
            raise ValueError(f"mode must be 'topk' or 'sampled', got {self.mode!r}")
        if self.k < 1 or self.samples < 1:
            raise ValueError(f"k and samples must be >= 1, got k={self.k}, samples={self.samples}")
        if self.proposal_temperature <= 0:
            raise ValueError(f"proposal_temperature must be > 0, got {self.proposal_temperature}")


def fingerprint_fields(
    *,
    teacher_sha256: str,
    tokenizer_sha256: str,
    dataset_sha256: str,
    max_length: int,
    settings: CaptureSettings,
) -> dict[str, Any]:
    """Everything the stored targets depend on, as a JSON-ready dict (hashed by the fingerprint)."""
    return {
        "format_version": FORMAT_VERSION,
        "teacher_sha256": teacher_sha256,
        "tokenizer_sha256": tokenizer_sha256,
        "dataset_sha256": dataset_sha256,
        "max_length": int(max_length),
        "settings": asdict(settings),
    }


def fingerprint_of(fields: Mapping[str, Any]) -> str:
    """sha256 hex of ``fields`` as canonical JSON (sorted keys, no spaces, ASCII)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_fingerprint(
    *,
    teacher_sha256: str,
    tokenizer_sha256: str,
    dataset_sha256: str,
    max_length: int,
    settings: CaptureSettings,
) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces) of :func:`fingerprint_fields`,
    which includes :data:`FORMAT_VERSION`."""
    return fingerprint_of(
        fingerprint_fields(
            teacher_sha256=teacher_sha256,
            tokenizer_sha256=tokenizer_sha256,
            dataset_sha256=dataset_sha256,
            max_length=max_length,
            settings=settings,
        )
    )


def pad_columns(tensor: Tensor, width: int) -> Tensor:
    """Right-pad ``(n, K)`` with zeros to ``(n, width)``: id 0 with weight 0 is a no-op target."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))


def _differences(expected: Any, stored: Any, prefix: str = "") -> list[str]:
    if isinstance(expected, Mapping) and isinstance(stored, Mapping):
        found = []
        for key in sorted(set(expected) | set(stored)):
            found += _differences(expected.get(key), stored.get(key), f"{prefix}{key}.")
        return found
    if expected != stored:
        return [f"{prefix.rstrip('.')} (cache has {stored!r}, expected {expected!r})"]
    return []


class TeacherCacheReader:
    """Read sparse targets of a verified cache; use :meth:`open`."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any]) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.settings = CaptureSettings(**manifest["settings"])
        self.n_examples: int = manifest["n_examples"]
        self.n_positions: int = manifest["n_positions"]
        self.k: int = manifest["k"]
        self._shards: list[dict[str, Any]] = manifest["shards"]
        self._firsts = [entry["first_example"] for entry in self._shards]
        self._handles: dict[int, Any] = {}
        self._offsets: list[Tensor] = []
        for shard, entry in enumerate(self._shards):
            offsets = self._handle(shard).get_tensor("offsets")
            steps = offsets[1:] - offsets[:-1]
            if (
                int(offsets[0]) != 0
                or int(offsets[-1]) != entry["n_positions"]
                or (steps < 0).any()
            ):
                raise CacheMismatch(f"shard {entry['file']} has offsets that do not fit its rows")
            self._offsets.append(offsets)

    @property
    def mode(self) -> str:
        return self.settings.mode

    @classmethod
    def open(
        cls,
        cache_dir: Path,
        *,
        expected_fingerprint: str,
        expected_fields: Mapping[str, Any] | None = None,
    ) -> TeacherCacheReader:
        """Open ``cache_dir`` after checking it is the cache the caller expects.

        Checks, in order: ``manifest.json`` exists and parses; its ``format_version`` is
        :data:`FORMAT_VERSION`; its fingerprint equals ``expected_fingerprint`` (when
        ``expected_fields`` is given, the differing fields are named) and the sha256 of its own
        ``fields``; every shard file exists with the recorded byte size, tensor names, shapes
        and dtypes, and contiguous example ranges covering ``n_examples``.

        Raises:
            CacheMismatch: naming the first field, file or size that differs.
        """
        cache_dir = Path(cache_dir)
        manifest_path = cache_dir / MANIFEST
        if not manifest_path.is_file():
            raise CacheMismatch(f"{manifest_path} is missing")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CacheMismatch(f"{manifest_path} is not valid JSON: {error}") from error
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CacheMismatch(
                f"format_version differs: cache has {manifest.get('format_version')!r}, "
                f"this code reads {FORMAT_VERSION}"
            )
        if manifest.get("fingerprint") != expected_fingerprint:
            detail = ""
            if expected_fields is not None:
                diffs = _differences(expected_fields, manifest.get("fields", {}))
                detail = "; differing fields: " + (", ".join(diffs) or "none (stale fingerprint)")
            raise CacheMismatch(
                f"fingerprint differs: cache has {manifest.get('fingerprint')!r}, expected "
                f"{expected_fingerprint!r}{detail}"
            )
        if fingerprint_of(manifest.get("fields", {})) != expected_fingerprint:
            raise CacheMismatch("fields in the manifest do not hash to its fingerprint")
        if manifest.get("settings") != manifest["fields"].get("settings"):
            raise CacheMismatch("settings in the manifest differ from its fingerprinted fields")
        _check_shards(cache_dir, manifest)
        return cls(cache_dir, manifest)

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.n_examples:
            raise IndexError(f"example {index} is outside the cache's {self.n_examples} examples")
        shard = bisect.bisect_right(self._firsts, index) - 1
        return shard, index - self._firsts[shard]

    def _handle(self, shard: int) -> Any:
        # safe_open memory-maps the file: slices read only the rows asked for.
        if shard not in self._handles:
            path = str(self.cache_dir / self._shards[shard]["file"])
            self._handles[shard] = safe_open(path, framework="pt")
        return self._handles[shard]

    def _gather(self, example_indices: list[int], name: str) -> list[Tensor]:
        pieces: list[Tensor] = []
        for index in example_indices:
            shard, local = self._locate(int(index))
            begin, end = self._offsets[shard][local : local + 2].tolist()
            pieces.append(self._handle(shard).get_slice(name)[begin:end])
        return pieces

    def close(self) -> None:
        """Drop the memory maps of the shards read so far."""
        self._handles.clear()

    def targets(self, example_indices: list[int]) -> tuple[Tensor, Tensor]:
        """Sparse targets of the response positions of ``example_indices``, concatenated.

        Order: examples in the given order, each example's positions in increasing index
        order: the row order of ``logits[:, :-1][labels[:, 1:] != -100]`` for a batch collated
        from the same examples in the same order.

        Returns:
            ``token_ids (n, K)`` int64 and ``weights (n, K)`` float32, ``n`` = the examples'
            response positions, ``K`` = :attr:`k` (the cache-wide width; padding has id 0 and
            weight 0). ``weights`` are teacher probabilities (``topk``) or importance weights
            (``sampled``); pass both with :attr:`mode` to ``sparse_kd_loss``.
        """
        ids = [pad_columns(t, self.k) for t in self._gather(example_indices, "token_ids")]
        weights = [pad_columns(t, self.k) for t in self._gather(example_indices, "weights")]
        if not ids:
            return torch.zeros((0, self.k), dtype=torch.long), torch.zeros((0, self.k))
        return torch.cat(ids).long(), torch.cat(weights).float()

    def teacher_entropy(self, example_indices: list[int]) -> Tensor:
        """Exact ``H(p)`` of the teacher's full softmax, ``(n,)`` float32, same order as
        :meth:`targets`; ``sparse_kd_loss(..., teacher_entropy=)`` turns the sampled CE into a KL
        estimate."""
        pieces = self._gather(example_indices, "entropy")
        return torch.cat(pieces).float() if pieces else torch.zeros(0)


def _check_shards(cache_dir: Path, manifest: dict[str, Any]) -> None:
    expected_first = 0
    for entry in manifest["shards"]:
        path = cache_dir / entry["file"]
        if not path.is_file():
            raise CacheMismatch(f"shard {entry['file']} is missing from {cache_dir}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CacheMismatch(
                f"shard {entry['file']} size differs: {size} bytes, manifest says {entry['bytes']}"
            )
        if entry["first_example"] != expected_first:
            raise CacheMismatch(f"shard {entry['file']} does not start at example {expected_first}")
        rows, width = entry["n_positions"], entry["k"]
        shapes = {
            "token_ids": ([rows, width], "I32"),
            "weights": ([rows, width], "F32"),
            "entropy": ([rows], "F32"),
            "offsets": ([entry["n_examples"] + 1], "I64"),
        }
        with safe_open(str(path), framework="pt") as handle:
            if set(handle.keys()) != set(TENSOR_NAMES):
                raise CacheMismatch(f"shard {entry['file']} holds tensors {sorted(handle.keys())}")
            for name, (shape, dtype) in shapes.items():
                tensor_slice = handle.get_slice(name)
                found = (list(tensor_slice.get_shape()), tensor_slice.get_dtype())
                if found != (shape, dtype):
                    raise CacheMismatch(
                        f"shard {entry['file']} tensor {name} is {found}, manifest says "
                        f"{(shape, dtype)}"
                    )
        expected_first += entry["n_examples"]
    if expected_first != manifest["n_examples"]:
        raise CacheMismatch(
            f"shards cover {expected_first} examples, manifest says {manifest['n_examples']}"
        )
