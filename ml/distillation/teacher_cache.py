"""Teacher-logit cache: run the teacher once, store sparse targets, reuse them across runs.

Offline distillation spends most of its time in teacher forwards that are identical every epoch
and every job on the same (teacher, tokenizer, dataset, max_length). Storing the full
``(tokens, vocab)`` distributions is too large, so only sparse targets are kept
(:mod:`ml.distillation.sparse_targets`: top-k, or the unbiased importance-sampled variant of
Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs",
ACL 2025), and only at *response* positions: logits at position ``i`` predict ``labels[i+1]``,
so position ``i`` is kept when ``labels[i+1] != -100`` (the recipe's shifted mask).

On-disk format (safetensors + JSON only; no pickle)::

    <cache_dir>/manifest.json        {format_version, fingerprint, fields, settings,
                                      n_examples, n_positions, k, shards: [...]}
    <cache_dir>/shard_00000.safetensors
        token_ids  int32   (n_positions_in_shard, K_shard)   padded with id 0 / weight 0
        weights    float32 (n_positions_in_shard, K_shard)   topk: p; sampled: (c/N) p/r
        entropy    float32 (n_positions_in_shard,)           exact H(p) of the full softmax
        offsets    int64   (n_examples_in_shard + 1,)        example e's rows: offsets[e:e+1]

Shards hold ``shard_examples`` consecutive examples each. Each manifest shard entry records
``file, first_example, n_examples, n_positions, k, bytes``. The directory is written under a
temporary sibling name and renamed into place, so a cache directory that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ml.data.examples import IGNORE_INDEX, collate
from ml.distillation.sparse_targets import sampled_targets, topk_targets
from ml.distillation.teacher_cache_reader import (
    FORMAT_VERSION,
    MANIFEST,
    CacheMismatch,
    CaptureSettings,
    TeacherCacheReader,
    cache_fingerprint,
    fingerprint_fields,
    fingerprint_of,
    pad_columns,
)

__all__ = [
    "FORMAT_VERSION",
    "CacheMismatch",
    "CaptureSettings",
    "TeacherCacheReader",
    "cache_fingerprint",
    "capture_teacher_targets",
    "fingerprint_fields",
    "write_teacher_cache",
]


def _example_seed(seed: int, index: int) -> int:
    # One stream per example: a position's draw depends on (seed, example), not on batching.
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _response_logits(logits: Tensor, labels: Tensor) -> tuple[Tensor, list[int]]:
    """``logits (B, T, V)``, ``labels (B, T)`` unshifted -> ``(n, V)`` rows, positions per row.

    Rows come example by example, positions increasing: the order of boolean-mask indexing,
    which is also what the recipe's ``logits[:, :-1][labels[:, 1:] != -100]`` gives.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1][mask], mask.sum(dim=1).tolist()


class _ShardWriter:
    """Accumulates per-example sparse targets and writes ``shard_%05d.safetensors`` files."""

    def __init__(self, directory: Path, shard_examples: int) -> None:
        self.directory = directory
        self.shard_examples = shard_examples
        self.entries: list[dict[str, Any]] = []
        self._rows: list[tuple[Tensor, Tensor, Tensor]] = []
        self._first_example = 0

    def add(self, token_ids: Tensor, weights: Tensor, entropy: Tensor) -> None:
        """One example's ``(n_i, K_i)`` ids and weights and ``(n_i,)`` entropies."""
        self._rows.append((token_ids.to("cpu", torch.int32), weights.cpu(), entropy.cpu()))
        if len(self._rows) == self.shard_examples:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        width = max(ids.shape[1] for ids, _, _ in self._rows)
        lengths = torch.tensor([0] + [ids.shape[0] for ids, _, _ in self._rows])
        tensors = {
            "token_ids": torch.cat([pad_columns(i, width) for i, _, _ in self._rows]),
            "weights": torch.cat([pad_columns(w, width) for _, w, _ in self._rows]),
            "entropy": torch.cat([h for _, _, h in self._rows]),
            "offsets": lengths.cumsum(0).to(torch.int64),
        }
        name = f"shard_{len(self.entries):05d}.safetensors"
        path = self.directory / name
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(path),
            metadata={"format_version": str(FORMAT_VERSION)},
        )
        self.entries.append(
            {
                "file": name,
                "first_example": self._first_example,
                "n_examples": len(self._rows),
                "n_positions": int(tensors["offsets"][-1]),
                "k": width,
                "bytes": path.stat().st_size,
            }
        )
        self._first_example += len(self._rows)
        self._rows = []


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.iterdir()):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def capture_teacher_targets(
    teacher: torch.nn.Module,
    examples: list[dict[str, list[int]]],
    out_dir: Path,
    *,
    settings: CaptureSettings,
    fingerprint: str,
    fingerprint_fields: dict[str, Any],
    batch_size: int = 16,
    device: str = "cpu",
    shard_examples: int = 1024,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the teacher once over ``examples`` and write their sparse targets to ``out_dir``.

    Args:
        teacher: a causal LM called as ``teacher(input_ids=, attention_mask=)`` returning
            ``.logits (B, T, V)``; run in ``eval()`` under ``no_grad`` (its mode is restored).
            Softmax is taken in float32 of whatever dtype it produces.
        examples: :func:`ml.data.examples.encode_example` outputs (``input_ids``, ``labels`` of
            equal length; labels unshifted, -100 on bos and prompt), in dataset order.
        out_dir: the cache directory to create. It is built as a hidden temporary sibling and
            renamed into place only when complete; on any exception the sibling is removed.
            If ``out_dir`` already exists with the same fingerprint (another worker finished
            first) that cache is kept and its manifest returned; with another fingerprint,
            :class:`FileExistsError`.
        settings: the capture mode; must equal ``fingerprint_fields["settings"]``.
        fingerprint: :func:`cache_fingerprint` of ``fingerprint_fields`` (checked).
        fingerprint_fields: :func:`fingerprint_fields` output, stored so a mismatch can be
            explained field by field.
        batch_size: examples per teacher forward (right-padded; with causal attention padding
            does not change real positions beyond float rounding).
        device: where the teacher runs; batches are moved there.
        shard_examples: examples per shard file.
        on_progress: called ``(examples_done, n_examples)`` after each batch.

    Returns:
        The manifest dict, as written to ``manifest.json``.
    """
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            return write_teacher_cache(
                lambda batch, first: _capture_batch(teacher, batch, first, settings, device),
                examples, out_dir, settings=settings, fingerprint=fingerprint,
                fingerprint_fields=fingerprint_fields, batch_size=batch_size,
                shard_examples=shard_examples, on_progress=on_progress,
            )  # fmt: skip
    finally:
        teacher.train(was_training)


# (a batch of encoded examples, index of its first example) -> per example (ids (n_i, K),
# weights (n_i, K), entropy (n_i,)) at its response positions.
BatchTargets = Callable[[list[dict[str, list[int]]], int], list[tuple[Tensor, Tensor, Tensor]]]


def write_teacher_cache(
    batch_targets: BatchTargets,
    examples: list[dict[str, list[int]]],
    out_dir: Path,
    *,
    settings: CaptureSettings,
    fingerprint: str,
    fingerprint_fields: dict[str, Any],
    batch_size: int = 16,
    shard_examples: int = 1024,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a cache from any source of per-example sparse targets (a local teacher's forward
    pass, or a remote teacher's top-k: :func:`ml.distillation.remote_teacher.cache_batch_targets`).
    Arguments and the atomic build as in :func:`capture_teacher_targets`."""
    if batch_size < 1 or shard_examples < 1:
        raise ValueError(
            f"batch_size and shard_examples must be >= 1 ({batch_size}, {shard_examples})"
        )
    if fingerprint_of(fingerprint_fields) != fingerprint:
        raise ValueError("fingerprint is not the sha256 of fingerprint_fields")
    if fingerprint_fields.get("settings") != asdict(settings):
        raise ValueError("settings differ from fingerprint_fields['settings']")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        writer = _ShardWriter(staging, shard_examples)
        for start in range(0, len(examples), batch_size):
            batch_examples = examples[start : start + batch_size]
            for example in batch_examples:
                if len(example["input_ids"]) != len(example["labels"]):
                    raise ValueError("an example's input_ids and labels differ in length")
            rows = batch_targets(batch_examples, start)
            if len(rows) != len(batch_examples):
                raise ValueError(f"{len(rows)} targets for {len(batch_examples)} examples")
            for ids, weights, entropy in rows:
                writer.add(ids, weights, entropy)
            if on_progress is not None:
                on_progress(start + len(batch_examples), len(examples))
        writer.flush()
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "fields": fingerprint_fields,
            "settings": asdict(settings),
            "n_examples": len(examples),
            "n_positions": sum(entry["n_positions"] for entry in writer.entries),
            "k": max((entry["k"] for entry in writer.entries), default=0),
            "shards": writer.entries,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsync_tree(staging)
        try:
            staging.rename(out_dir)
        except OSError:
            if not out_dir.is_dir():
                raise
            existing = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
            if existing.get("fingerprint") != fingerprint:
                raise FileExistsError(
                    f"{out_dir} already holds a teacher cache with another fingerprint"
                ) from None
            shutil.rmtree(staging)
            return dict(existing)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _capture_batch(
    teacher: torch.nn.Module,
    batch_examples: list[dict[str, list[int]]],
    first_index: int,
    settings: CaptureSettings,
    device: str,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    # Right padding with any id: causal attention keeps real positions blind to it.
    batch = {k: v.to(device) for k, v in collate(batch_examples, pad_id=0).items()}
    logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows, counts = _response_logits(logits, batch["labels"])
    log_p = torch.log_softmax(rows.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    if settings.mode == "topk":
        all_ids, all_weights = topk_targets(rows, settings.k)
    out = []
    start = 0
    for offset, count in enumerate(counts):
        if settings.mode == "topk":
            ids, weights = all_ids[start : start + count], all_weights[start : start + count]
        else:
            example_logits = rows[start : start + count]
            generator = torch.Generator(device=rows.device)
            generator.manual_seed(_example_seed(settings.seed, first_index + offset))
            ids, weights = sampled_targets(
                example_logits,
                settings.samples,
                proposal_temperature=settings.proposal_temperature,
                generator=generator,
            )
        out.append((ids, weights, entropy[start : start + count]))
        start += count
    return out
