"""Teacher work done once and shared: sequence-level KD generations and sparse logit caches.
The worker prepares them before training (ml does the tensor work; this file does the lookups,
the build claims and the events), so a second job on the same teacher and examples reuses them
instead of running the teacher's forward pass again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.config import Settings
from ml.data.examples import encode_example
from ml.distillation.data_modes import seqkd_records
from ml.distillation.remote_teacher import cache_batch_targets
from ml.distillation.sampling import GenerationSettings
from ml.distillation.teacher_cache import (
    CaptureSettings,
    capture_teacher_targets,
    fingerprint_fields,
    fingerprint_of,
    write_teacher_cache,
)
from ml.loading import load_causal_lm, load_tokenizer, weights_sha256
from workers.teacher_artifacts import ArtifactRef, abandon, claim_build, find_ready, mark_ready

if TYPE_CHECKING:
    from workers.remote_teacher_client import RemoteTeacherHandle

EventSink = Callable[[str, str, dict[str, Any]], None]


def records_sha256(records: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(records, ensure_ascii=False).encode()).hexdigest()


def teacher_sha(resolved_teacher: dict[str, Any]) -> str:
    return resolved_teacher.get("weights_sha256") or weights_sha256(Path(resolved_teacher["path"]))


def seqkd_train_records(
    settings: Settings,
    *,
    job_id: str,
    teacher: dict[str, Any],
    records: list[tuple[str, str]],
    generation: dict[str, Any],
    seed: int,
    max_length: int,
    device: str,
    event: EventSink,
) -> list[tuple[str, str]]:
    """The training records with the teacher's responses (Kim & Rush 2016), stored and reused."""
    gen = GenerationSettings(**generation)
    teacher_hash, examples_hash = teacher_sha(teacher), records_sha256(records)
    fields = {"kind": "seqkd", "teacher": teacher_hash, "records": examples_hash,
              "generation": generation, "seed": seed, "max_length": max_length}  # fmt: skip
    fingerprint = fingerprint_of(fields)
    found = find_ready(settings, kind="seqkd", fingerprint=fingerprint)
    if found is not None:
        event("info", "seqkd generations reused", {"artifact": found.id})
        return _read_records(found.path / "records.jsonl")
    ref = claim_build(
        settings, kind="seqkd", fingerprint=fingerprint, teacher_sha256=teacher_hash,
        examples_sha256=examples_hash, capture_settings=fields, job_id=job_id,
    )  # fmt: skip
    event("info", f"generating seqkd responses for {len(records)} prompts", {})
    model = load_causal_lm(Path(teacher["path"]), device=device)
    generated = seqkd_records(
        model, load_tokenizer(Path(teacher["path"])), records, gen, seed=seed,
        max_length=max_length,
    )  # fmt: skip
    if ref is not None:
        try:
            ref.path.mkdir(parents=True, exist_ok=True)
            _write_records(ref.path / "records.jsonl", generated)
            mark_ready(settings, ref)
        except BaseException:
            abandon(settings, ref)
            raise
        event("info", "seqkd generations stored", {"artifact": ref.id})
    return generated


@dataclass(frozen=True)
class CachePlan:
    """What the recipe opens: the cache directory and the fields its fingerprint must match."""

    path: Path
    fingerprint: str
    fields: dict[str, Any]


def prepare_teacher_cache(
    settings: Settings,
    *,
    job_id: str,
    teacher: dict[str, Any],
    records: list[tuple[str, str]],
    max_length: int,
    requested: dict[str, Any] | None,
    device: str,
    event: EventSink,
    remote: RemoteTeacherHandle | None = None,
) -> CachePlan | None:
    """``requested`` None ("auto"): a ready cache for this teacher and these examples, if any.
    Settings given: the cache with exactly those capture settings, built now if missing.
    With ``remote``, the teacher is the remote one: named by its identity, built from its
    top-k answers over the examples encoded with the student's tokenizer."""
    # The encoded examples are a function of (records, tokenizer, max_length), all three in the
    # fingerprint: looking a cache up needs no tokenization, only building one does.
    examples_hash = records_sha256(records)
    if remote is not None:
        teacher_hash, tokenizer_hash = remote.identity, remote.tokenizer_sha256
    else:
        teacher_hash = teacher_sha(teacher)
        tokenizer_hash = teacher.get("tokenizer_sha256") or ""

    def fields_for(capture: CaptureSettings) -> dict[str, Any]:
        return fingerprint_fields(
            teacher_sha256=teacher_hash, tokenizer_sha256=tokenizer_hash,
            dataset_sha256=examples_hash, max_length=max_length, settings=capture,
        )  # fmt: skip

    if requested is None:
        found = find_ready(
            settings, kind="logits", teacher_sha256=teacher_hash, examples_sha256=examples_hash
        )
        if found is None:
            return None
        fields = fields_for(CaptureSettings(**found.settings))
        event("info", "teacher cache hit", {"artifact": found.id, "settings": found.settings})
        return CachePlan(found.path, found.fingerprint, fields)
    capture = CaptureSettings(**requested)
    fields = fields_for(capture)
    fingerprint = fingerprint_of(fields)
    found = find_ready(settings, kind="logits", fingerprint=fingerprint)
    if found is not None:
        event("info", "teacher cache hit", {"artifact": found.id, "settings": requested})
        return CachePlan(found.path, fingerprint, fields)
    ref = claim_build(
        settings, kind="logits", fingerprint=fingerprint, teacher_sha256=teacher_hash,
        examples_sha256=examples_hash, capture_settings=dict(requested), job_id=job_id,
    )  # fmt: skip
    if ref is None:
        event("warn", "another job is building this teacher cache; running the teacher", {})
        return None
    tokenizer = load_tokenizer(remote.student_dir if remote else Path(teacher["path"]))
    examples = [encode_example(tokenizer, p, r, max_length) for p, r in records]
    _build(settings, ref, teacher, examples, capture, fields, device, event, remote)
    return CachePlan(ref.path, fingerprint, fields)


def _build(
    settings: Settings,
    ref: ArtifactRef,
    teacher: dict[str, Any],
    examples: list[dict[str, list[int]]],
    capture: CaptureSettings,
    fields: dict[str, Any],
    device: str,
    event: EventSink,
    remote: RemoteTeacherHandle | None = None,
) -> None:
    event("info", f"teacher cache miss: capturing {capture.mode} targets", {"artifact": ref.id})
    try:
        if remote is not None:  # top-k only: the server never sends the whole distribution
            if capture.mode != "topk":
                raise ValueError("a remote teacher's cache is a top-k capture")
            manifest = write_teacher_cache(
                cache_batch_targets(remote.client.score, capture.k), examples, ref.path,
                settings=capture, fingerprint=ref.fingerprint, fingerprint_fields=fields,
            )  # fmt: skip
        else:
            model = load_causal_lm(Path(teacher["path"]), device=device)
            manifest = capture_teacher_targets(
                model, examples, ref.path, settings=capture, fingerprint=ref.fingerprint,
                fingerprint_fields=fields, device=device,
            )  # fmt: skip
        mark_ready(settings, ref)
    except BaseException:
        abandon(settings, ref)
        raise
    event("info", "teacher cache built",
          {"artifact": ref.id, "positions": manifest["n_positions"]})  # fmt: skip


def _write_records(path: Path, records: list[tuple[str, str]]) -> None:
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8") as fh:
        for prompt, response in records:
            fh.write(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False))
            fh.write("\n")
    tmp.replace(path)


def _read_records(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return [(r["prompt"], r["response"]) for r in map(json.loads, fh) if r]
