"""Teacher-logit cache: capture/read round trip, sparse KD loss, unbiasedness, safety checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.distributions import Categorical, kl_divergence

from ml.data.examples import IGNORE_INDEX, collate, encode_example
from ml.distillation.losses import kd_loss
from ml.distillation.sparse_targets import sampled_targets, sparse_kd_loss, topk_targets
from ml.distillation.teacher_cache import (
    FORMAT_VERSION,
    CacheMismatch,
    CaptureSettings,
    TeacherCacheReader,
    cache_fingerprint,
    capture_teacher_targets,
    fingerprint_fields,
)
from ml.loading import load_causal_lm, load_tokenizer

Examples = list[dict[str, list[int]]]


def _fields(settings: CaptureSettings, dataset: str = "d" * 64) -> dict[str, Any]:
    return fingerprint_fields(
        teacher_sha256="t" * 64,
        tokenizer_sha256="k" * 64,
        dataset_sha256=dataset,
        max_length=64,
        settings=settings,
    )


def _capture(teacher: torch.nn.Module, examples: Examples, out: Path, **kwargs: Any) -> dict:
    settings = kwargs.pop("settings", CaptureSettings())
    fields = _fields(settings)
    fingerprint = cache_fingerprint(
        teacher_sha256="t" * 64,
        tokenizer_sha256="k" * 64,
        dataset_sha256="d" * 64,
        max_length=64,
        settings=settings,
    )
    return capture_teacher_targets(
        teacher,
        examples,
        out,
        settings=settings,
        fingerprint=fingerprint,
        fingerprint_fields=fields,
        **kwargs,
    )


def _open(out: Path, manifest: dict) -> TeacherCacheReader:
    return TeacherCacheReader.open(out, expected_fingerprint=manifest["fingerprint"])


class FixedTeacher(torch.nn.Module):
    """Returns the same next-token logits ``(V,)`` at every position of every example."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("fixed", logits)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> SimpleNamespace:
        batch, seq = input_ids.shape
        return SimpleNamespace(logits=self.fixed.expand(batch, seq, -1).clone())


def _fixed_examples(n_examples: int, responses: int, prompt: int = 3) -> Examples:
    length = 1 + prompt + responses
    labels = [IGNORE_INDEX] * (1 + prompt) + [1] * responses
    return [{"input_ids": [1] * length, "labels": labels} for _ in range(n_examples)]


@pytest.fixture(scope="module")
def tiny(tiny_teacher_dir: Path, instruction_pairs: Any) -> tuple[torch.nn.Module, Examples, int]:
    tokenizer = load_tokenizer(tiny_teacher_dir)
    teacher = load_causal_lm(tiny_teacher_dir)
    train, _ = instruction_pairs
    examples = [encode_example(tokenizer, p, r, 64) for p, r in train[:14]]
    return teacher, examples, int(tokenizer.pad_token_id)


# ------------------------------------------------------------------ capture / read round trip
def test_read_back_equals_teacher_topk_at_response_positions(tiny: Any, tmp_path: Path) -> None:
    teacher, examples, _ = tiny
    settings = CaptureSettings(mode="topk", k=8)
    seen: list[tuple[int, int]] = []
    manifest = _capture(
        teacher,
        examples,
        tmp_path / "cache",
        settings=settings,
        batch_size=5,  # batches straddle the 4-example shards
        shard_examples=4,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert [s["n_examples"] for s in manifest["shards"]] == [4, 4, 4, 2]
    assert seen == [(5, 14), (10, 14), (14, 14)]
    reader = _open(tmp_path / "cache", manifest)
    order = [9, 0, 13, 5, 4]
    ids, weights = reader.targets(order)

    expected_ids, expected_probs = [], []
    with torch.no_grad():
        for index in order:  # one example at a time, unpadded: an independent path
            input_ids = torch.tensor([examples[index]["input_ids"]])
            labels = torch.tensor(examples[index]["labels"])
            logits = teacher(input_ids=input_ids).logits[0, :-1]
            probs = torch.softmax(logits[labels[1:] != IGNORE_INDEX].float(), dim=-1)
            top = probs.topk(8, dim=-1)
            expected_ids.append(top.indices)
            expected_probs.append(top.values)
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32
    assert torch.equal(ids, torch.cat(expected_ids))
    torch.testing.assert_close(weights, torch.cat(expected_probs), atol=1e-6, rtol=1e-5)
    n_response = sum(sum(1 for x in examples[i]["labels"][1:] if x != IGNORE_INDEX) for i in order)
    assert ids.shape == (n_response, 8)
    assert (
        manifest["n_positions"]
        == reader.n_positions
        == sum(sum(1 for x in e["labels"][1:] if x != IGNORE_INDEX) for e in examples)
    )


def test_cached_rows_follow_the_recipe_batch_mask_and_match_dense_kd(
    tiny: Any, tmp_path: Path
) -> None:
    """The integration path: collate a batch, gather student logits with the shifted mask."""
    teacher, examples, pad_id = tiny
    vocab = teacher.config.vocab_size
    manifest = _capture(
        teacher, examples, tmp_path / "c", settings=CaptureSettings(k=vocab), batch_size=8
    )
    reader = _open(tmp_path / "c", manifest)
    order = [3, 11, 0, 7]
    batch = collate([examples[i] for i in order], pad_id)
    with torch.no_grad():
        teacher_logits = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    teacher_logits = teacher_logits[:, :-1]
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    generator = torch.Generator().manual_seed(0)
    student_logits = teacher_logits + torch.randn(teacher_logits.shape, generator=generator)

    ids, weights = reader.targets(order)
    assert ids.shape == (int(mask.sum()), vocab)
    for temperature in (1.0, 2.0):
        sparse = sparse_kd_loss(
            student_logits[mask], ids, weights, mode="topk", temperature=temperature
        )
        dense = kd_loss(
            student_logits,
            teacher_logits,
            method="fkl",
            mask=mask,
            temperature=temperature,
            reduction="sum",
        )
        torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)
    same = sparse_kd_loss(teacher_logits[mask], ids, weights, mode="topk", reduction="mean")
    assert abs(float(same)) < 1e-5  # any misordered row would give a large KL


# ------------------------------------------------------------------------- sparse_kd_loss
def test_topk_with_full_vocab_equals_dense_forward_kl_and_its_gradient() -> None:
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(12, 20, generator=generator) * 2
    student = (torch.randn(12, 20, generator=generator) * 2).requires_grad_()
    ids, probs = topk_targets(teacher, 20)
    for temperature in (1.0, 2.0):
        sparse = sparse_kd_loss(student, ids, probs, mode="topk", temperature=temperature)
        reference = kl_divergence(
            Categorical(logits=teacher / temperature), Categorical(logits=student / temperature)
        ).sum() * (temperature**2)
        torch.testing.assert_close(sparse, reference, rtol=1e-5, atol=1e-5)
        (grad,) = torch.autograd.grad(sparse, student)
        (expected_grad,) = torch.autograd.grad(reference, student)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
    assert float(sparse_kd_loss(teacher, ids, probs, mode="topk")) == pytest.approx(0, abs=1e-5)


def test_topk_small_k_by_hand() -> None:
    # p = (.5, .3, .2); k = 2 keeps (.5, .3) -> p~ = (5/8, 3/8). A student equal to the teacher
    # then scores KL(p~ || q) = sum p~ log(p~ / p) = -log(0.8): the dropped mass (biased top-k).
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    ids, probs = topk_targets(logits, 2)
    assert ids.tolist() == [[0, 1]]
    value = sparse_kd_loss(logits, ids, probs, mode="topk")
    assert float(value) == pytest.approx(-math.log(0.8), rel=1e-5)
    uniform = torch.zeros(1, 3)
    expected = 5 / 8 * math.log(5 / 8 * 3) + 3 / 8 * math.log(3 / 8 * 3)
    assert float(sparse_kd_loss(uniform, ids, probs, mode="topk")) == pytest.approx(expected)


def test_empty_and_invalid_inputs() -> None:
    empty = sparse_kd_loss(
        torch.zeros(0, 5), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), mode="sampled"
    )
    assert float(empty) == 0.0 and not torch.isnan(empty)
    logits, ids, weights = torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)
    with pytest.raises(ValueError, match="temperature 1 only"):
        sparse_kd_loss(logits, ids, weights, mode="sampled", temperature=2.0)
    with pytest.raises(ValueError, match="mode"):
        sparse_kd_loss(logits, ids, weights, mode="dense")
    with pytest.raises(ValueError, match=r"\(n, K\)"):
        sparse_kd_loss(logits, ids[:1], weights, mode="topk")


def test_sampled_targets_are_unique_ids_with_frequency_weights() -> None:
    logits = torch.randn(50, 30, generator=torch.Generator().manual_seed(2))
    ids, weights = sampled_targets(logits, 16, generator=torch.Generator().manual_seed(3))
    for row_ids, row_weights in zip(ids, weights, strict=True):
        kept = row_ids[row_weights > 0]
        assert torch.equal(kept, kept.unique())  # unique and increasing
        counts = row_weights[row_weights > 0] * 16
        torch.testing.assert_close(counts, counts.round())
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(50))  # r = p: sums to 1
    assert ids.shape[1] == int((weights > 0).sum(dim=1).max())


# ------------------------------------------------------------------ sampled: Monte Carlo
@pytest.mark.parametrize("proposal_temperature", [1.0, 2.0])
def test_sampled_estimator_is_unbiased_for_ce_kl_and_gradient(
    proposal_temperature: float, tmp_path: Path
) -> None:
    """Average the estimator over independent captures; compare to the dense values.

    Each position's estimate is the mean of ``N`` i.i.d. terms ``g(y) = (p/r)(y) h(y)``,
    ``y ~ r``, so the average over ``M`` positions has standard error
    ``sqrt(Var_r[g] / (N M))``, computed exactly below; we allow 5 of them (a seeded test,
    but a true bias larger than that would be caught).
    """
    teacher_logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -2.5])
    student_logits = torch.tensor([0.5, 1.5, 0.0, -0.5, 0.2, -1.0])
    p = torch.softmax(teacher_logits.double(), dim=0)
    r = p ** (1 / proposal_temperature)
    r = r / r.sum()
    q = torch.softmax(student_logits.double(), dim=0)
    samples, per_capture = 8, 24 * 40
    estimates, kl_estimates, gradients = [], [], []
    for seed in range(3):
        settings = CaptureSettings(
            mode="sampled", samples=samples, proposal_temperature=proposal_temperature, seed=seed
        )
        out = tmp_path / f"seed{seed}"
        manifest = _capture(
            FixedTeacher(teacher_logits), _fixed_examples(24, 40), out, settings=settings
        )
        reader = _open(out, manifest)
        ids, weights = reader.targets(list(range(24)))
        assert ids.shape[0] == per_capture
        student = student_logits.clone().requires_grad_()
        rows = student.expand(per_capture, -1)
        estimate = sparse_kd_loss(rows, ids, weights, mode="sampled", reduction="mean")
        (gradient,) = torch.autograd.grad(estimate, student)
        entropy = reader.teacher_entropy(list(range(24)))
        kl = sparse_kd_loss(
            rows.detach(), ids, weights, mode="sampled", reduction="mean", teacher_entropy=entropy
        )
        estimates.append(float(estimate.detach()))
        kl_estimates.append(float(kl))
        gradients.append(gradient.double())
    draws = samples * per_capture * 3
    dense_ce = float(-(p * q.log()).sum())
    dense_kl = float((p * (p.log() - q.log())).sum())
    ratio = p / r
    ce_terms = ratio * -q.log()
    ce_error = math.sqrt(float((r * ce_terms**2).sum() - dense_ce**2) / draws)
    assert abs(sum(estimates) / 3 - dense_ce) < 5 * ce_error
    assert abs(sum(kl_estimates) / 3 - dense_kl) < 5 * ce_error  # H(p) is exact: same error
    # d/dz of -log q(y) is q - e_y, so the per-draw gradient term is ratio(y) * (q - e_y).
    grad_terms = ratio[:, None] * (q[None, :] - torch.eye(6, dtype=torch.float64))
    dense_grad = q - p
    grad_error = ((r[:, None] * grad_terms**2).sum(dim=0) - dense_grad**2).sqrt() / math.sqrt(draws)
    assert ((torch.stack(gradients).mean(dim=0) - dense_grad).abs() < 5 * grad_error).all()
    if proposal_temperature != 1.0:
        # The test has power: dropping the p/r correction would be a bias far outside it.
        biased = float(-(r * q.log()).sum())
        assert abs(biased - dense_ce) > 20 * ce_error


# ----------------------------------------------------------------------- determinism
def test_sampled_capture_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    teacher = FixedTeacher(torch.randn(40, generator=torch.Generator().manual_seed(4)))
    examples = _fixed_examples(10, 12)
    settings = CaptureSettings(mode="sampled", samples=16, seed=5)
    read = []
    for name, batch_size, seed in (("a", 3, 5), ("b", 7, 5), ("c", 3, 6)):
        manifest = _capture(
            teacher,
            examples,
            tmp_path / name,
            settings=replace(settings, seed=seed),
            batch_size=batch_size,
            shard_examples=4,
        )
        read.append(_open(tmp_path / name, manifest).targets(list(range(10))))
    assert torch.equal(read[0][0], read[1][0]) and torch.equal(read[0][1], read[1][1])
    assert not torch.equal(read[0][0], read[2][0])


# --------------------------------------------------------------------- safety checks
@pytest.fixture()
def small_cache(tmp_path: Path) -> tuple[Path, dict]:
    teacher = FixedTeacher(torch.randn(16, generator=torch.Generator().manual_seed(6)))
    out = tmp_path / "cache"
    manifest = _capture(
        teacher, _fixed_examples(6, 5), out, settings=CaptureSettings(k=4), shard_examples=2
    )
    return out, manifest


def test_wrong_fingerprint_raises(small_cache: tuple[Path, dict]) -> None:
    out, _ = small_cache
    with pytest.raises(CacheMismatch, match="fingerprint differs"):
        TeacherCacheReader.open(out, expected_fingerprint="0" * 64)


def test_changed_setting_is_named(small_cache: tuple[Path, dict]) -> None:
    out, _ = small_cache
    changed = _fields(CaptureSettings(k=8))
    fingerprint = cache_fingerprint(
        teacher_sha256="t" * 64,
        tokenizer_sha256="k" * 64,
        dataset_sha256="d" * 64,
        max_length=64,
        settings=CaptureSettings(k=8),
    )
    with pytest.raises(CacheMismatch, match=r"settings\.k \(cache has 4, expected 8\)"):
        TeacherCacheReader.open(out, expected_fingerprint=fingerprint, expected_fields=changed)
    other_data = _fields(CaptureSettings(k=4), dataset="e" * 64)
    with pytest.raises(CacheMismatch, match="dataset_sha256"):
        TeacherCacheReader.open(out, expected_fingerprint="x", expected_fields=other_data)


def test_missing_or_resized_shard_raises(small_cache: tuple[Path, dict]) -> None:
    out, manifest = small_cache
    shard = out / "shard_00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-4])
    with pytest.raises(CacheMismatch, match="shard_00001.safetensors size differs"):
        _open(out, manifest)
    shard.unlink()
    with pytest.raises(CacheMismatch, match="shard shard_00001.safetensors is missing"):
        _open(out, manifest)


def test_other_format_version_raises(small_cache: tuple[Path, dict]) -> None:
    out, manifest = small_cache
    assert manifest["format_version"] == FORMAT_VERSION
    edited = dict(manifest, format_version=FORMAT_VERSION + 1)
    (out / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(CacheMismatch, match="format_version"):
        _open(out, manifest)


def test_reader_bounds_and_empty_selection(small_cache: tuple[Path, dict]) -> None:
    out, manifest = small_cache
    reader = _open(out, manifest)
    ids, weights = reader.targets([])
    assert ids.shape == (0, 4) and weights.shape == (0, 4)
    with pytest.raises(IndexError):
        reader.targets([6])


# --------------------------------------------------------------------- atomic write
def test_failed_capture_leaves_nothing_behind(tmp_path: Path) -> None:
    teacher = FixedTeacher(torch.randn(16, generator=torch.Generator().manual_seed(7)))

    def interrupt(done: int, total: int) -> None:
        if done >= 4:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        _capture(
            teacher,
            _fixed_examples(12, 5),
            tmp_path / "cache",
            batch_size=2,
            shard_examples=2,  # a shard is already on disk when the callback raises
            on_progress=interrupt,
        )
    assert list(tmp_path.iterdir()) == []
    assert teacher.training  # a new Module trains; capture ran it in eval and restored the mode


def test_existing_cache_is_reused_or_refused(small_cache: tuple[Path, dict]) -> None:
    out, manifest = small_cache
    teacher = FixedTeacher(torch.zeros(16))
    again = _capture(teacher, _fixed_examples(6, 5), out, settings=CaptureSettings(k=4))
    assert again == manifest  # the finished cache wins; the new staging dir is dropped
    assert sorted(p.name for p in out.parent.iterdir()) == ["cache"]
    with pytest.raises(FileExistsError):
        _capture(teacher, _fixed_examples(6, 5), out, settings=CaptureSettings(k=3))
