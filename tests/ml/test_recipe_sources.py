"""The recipe with each source of batches and teacher targets: data modes, several teachers,
a sparse teacher cache, a LoRA student. Each is compared with a run it must equal, or checked
for the quantity it must produce."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ml.data.examples import encode_example
from ml.distillation.recipe import RecipeConfig
from ml.distillation.teacher_cache import (
    CaptureSettings,
    cache_fingerprint,
    capture_teacher_targets,
    fingerprint_fields,
)
from ml.loading import load_causal_lm, load_tokenizer
from tests.ml.test_recipe import Recorder, interrupted_then_resumed, straight_run

GEN = {"max_new_tokens": 6, "temperature": 1.0}


def _losses(recorder: Recorder, key: str = "train/loss") -> torch.Tensor:
    series = recorder.series(key)
    return torch.tensor([series[s] for s in sorted(series)], dtype=torch.float64)


def test_onpolicy_steps_train_on_student_samples_and_resume_identically(
    make_config: Callable[..., RecipeConfig], tmp_path: Path
) -> None:
    common = {"data_mode": "onpolicy", "lmbda": 0.5, "generation": GEN, "max_steps": 4,
              "checkpoint_every": 2, "loss": "jsd"}  # fmt: skip
    straight = straight_run(make_config(checkpoint_dir=tmp_path / "a", **common))
    flags = straight.series("train/onpolicy")
    assert set(flags.values()) <= {0.0, 1.0} and sorted(flags) == [1, 2, 3, 4]
    _, resumed = interrupted_then_resumed(make_config, tmp_path / "b", 2, **common)
    a = torch.tensor([straight.series("train/loss")[s] for s in (3, 4)])
    b = torch.tensor([resumed.series("train/loss")[s] for s in (3, 4)])
    assert torch.allclose(a, b, rtol=1e-5), (a, b)


def test_opd_records_a_nonnegative_reverse_kl_estimate(
    make_config: Callable[..., RecipeConfig],
) -> None:
    recorder = straight_run(make_config(data_mode="opd", loss="rkl", generation=GEN, max_steps=3))
    estimates = _losses(recorder, "train/opd_reverse_kl")
    assert len(estimates) == 3 and torch.isfinite(estimates).all()
    # a per-step Monte Carlo estimate of a KL: noisy, but its mean over steps is not negative
    assert float(estimates.mean()) > -0.05


def test_skd_reports_an_acceptance_rate(make_config: Callable[..., RecipeConfig]) -> None:
    recorder = straight_run(make_config(data_mode="skd", skd_top_k=5, generation=GEN, max_steps=2))
    rates = _losses(recorder, "train/skd_acceptance")
    assert len(rates) == 2 and bool(((rates >= 0) & (rates <= 1)).all())


def test_two_identical_teachers_mixed_or_routed_equal_one(
    make_config: Callable[..., RecipeConfig], tiny_teacher_dir: Path
) -> None:
    common = {"max_steps": 3, "temperature": 2.0}
    single = straight_run(make_config(**common))
    two = {"extra_teacher_paths": [tiny_teacher_dir], **common}
    mixed = straight_run(make_config(teacher_weights=[0.3, 0.7], **two))
    n = len(make_config().train_records)
    routed = straight_run(make_config(train_routes=[i % 2 for i in range(n)], **two))
    assert torch.allclose(_losses(single), _losses(mixed), rtol=1e-5)
    assert torch.allclose(_losses(single), _losses(routed), rtol=1e-5)


def test_full_width_cache_reproduces_the_live_teacher(
    make_config: Callable[..., RecipeConfig], tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    config = make_config(max_steps=3, temperature=1.0, alpha_ce=0.2)
    tokenizer = load_tokenizer(tiny_teacher_dir)
    examples = [encode_example(tokenizer, p, r, config.max_length) for p, r in config.train_records]
    settings = CaptureSettings(mode="topk", k=len(tokenizer))
    fields = fingerprint_fields(teacher_sha256="t", tokenizer_sha256="k", dataset_sha256="d",
                                max_length=config.max_length, settings=settings)  # fmt: skip
    fingerprint = cache_fingerprint(teacher_sha256="t", tokenizer_sha256="k", dataset_sha256="d",
                                    max_length=config.max_length, settings=settings)  # fmt: skip
    capture_teacher_targets(load_causal_lm(tiny_teacher_dir), examples, tmp_path / "cache",
                            settings=settings, fingerprint=fingerprint,
                            fingerprint_fields=fields)  # fmt: skip
    live = straight_run(config)
    cached_recorder = Recorder()
    recipe = cached_recorder.recipe(make_config(
        max_steps=3, temperature=1.0, alpha_ce=0.2, teacher_cache_dir=tmp_path / "cache",
        teacher_cache_fingerprint=fingerprint, teacher_cache_fields=fields,
    ))  # fmt: skip
    recipe.setup()
    assert recipe.teacher is None  # the cache replaces the teacher's forward pass
    recipe.train()
    assert recipe.evaluate("teacher")["examples"] > 0  # reloaded for evaluation only
    assert torch.allclose(_losses(live), _losses(cached_recorder), rtol=1e-4)


def test_lora_student_trains_only_adapters_and_resumes(
    make_config: Callable[..., RecipeConfig], tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "merge": True}
    common = {"lora": lora, "max_steps": 4, "checkpoint_every": 2, "lr": 1e-2}
    recorder = Recorder()
    recipe = recorder.recipe(make_config(checkpoint_dir=tmp_path / "a", **common))
    recipe.setup()
    before = {n: p.detach().clone() for n, p in recipe.student.named_parameters()}
    recipe.train()
    changed = {n for n, p in recipe.student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    recipe.save_student(tmp_path / "student")
    assert (tmp_path / "student" / "adapter" / "adapter_model.safetensors").exists()
    assert load_causal_lm(tmp_path / "student").config.num_hidden_layers == 1

    _, resumed = interrupted_then_resumed(make_config, tmp_path / "b", 2, **common)
    a = torch.tensor([recorder.series("train/loss")[s] for s in (3, 4)])
    b = torch.tensor([resumed.series("train/loss")[s] for s in (3, 4)])
    assert torch.allclose(a, b, rtol=1e-6)
