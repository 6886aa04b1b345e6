"""The recipe across vocabularies: a teacher and a student with different tokenizers, each
reading the same text with its own; dskd, uld and mined train, and dskd's projectors resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ml.distillation.recipe import RecipeConfig
from ml.loading import load_tokenizer
from tests.ml.test_recipe import Recorder, interrupted_then_resumed, straight_run


@pytest.fixture
def cross_config(
    make_config: Callable[..., RecipeConfig], tiny_other_vocab_student: Path
) -> Callable[..., RecipeConfig]:
    def make(**overrides: object) -> RecipeConfig:
        base = {"student_path": tiny_other_vocab_student, "student_init": None, "lr": 5e-3,
                "alpha_ce": 0.5}  # fmt: skip
        return make_config(**(base | overrides))

    return make


def test_the_two_tokenizers_really_differ(tiny_teacher_dir: Path, tiny_other_vocab_student: Path):
    assert len(load_tokenizer(tiny_teacher_dir)) != len(load_tokenizer(tiny_other_vocab_student))


@pytest.mark.parametrize("loss", ["uld", "mined", "dskd"])
def test_cross_vocab_losses_train(cross_config: Callable[..., RecipeConfig], loss: str) -> None:
    recorder = Recorder()
    recipe = recorder.recipe(cross_config(loss=loss, max_steps=6))
    recipe.setup()
    outcome = recipe.train()
    kd = recorder.series("train/loss_kd")
    assert sorted(kd) == list(range(1, 7)) and all(v == v and v >= 0 for v in kd.values())
    assert outcome.eval["examples"] > 0
    # the teacher is evaluated with its own tokenizer
    assert recipe.evaluate("teacher")["examples"] == outcome.eval["examples"]
    recipe.cleanup()


def test_dskd_projectors_are_checkpointed_and_resume(
    cross_config: Callable[..., RecipeConfig], tmp_path: Path
) -> None:
    common = {"loss": "dskd", "max_steps": 4, "checkpoint_every": 2}
    straight = straight_run(cross_config(checkpoint_dir=tmp_path / "a", **common))
    stopped, resumed = interrupted_then_resumed(cross_config, tmp_path / "b", 2, **common)
    from safetensors import safe_open

    with safe_open(str(stopped.checkpoints[0][1] / "model.safetensors"), "pt") as f:
        assert any(k.startswith("projector.") for k in f.keys())
    a = torch.tensor([straight.series("train/loss")[s] for s in (3, 4)])
    b = torch.tensor([resumed.series("train/loss")[s] for s in (3, 4)])
    assert torch.allclose(a, b, rtol=1e-5), (a, b)


def test_cross_vocab_loss_needs_the_students_own_model(make_config) -> None:
    with pytest.raises(ValueError, match="needs a student_path"):
        make_config(loss="uld").validate()


def test_ce_fine_tunes_a_student_of_another_tokenizer(
    cross_config: Callable[..., RecipeConfig], tiny_teacher_dir: Path
) -> None:
    """Plain fine-tuning needs no shared vocabulary: the student reads with its own tokenizer
    and the teacher, evaluated for comparison, with its own."""
    recorder = Recorder()
    recipe = recorder.recipe(cross_config(loss="ce", alpha_ce=0.0, max_steps=3))
    recipe.setup()
    assert len(recipe.tokenizer) != len(load_tokenizer(tiny_teacher_dir))
    outcome = recipe.train()
    assert outcome.eval["examples"] > 0
    assert recipe.evaluate("teacher")["examples"] == outcome.eval["examples"]
