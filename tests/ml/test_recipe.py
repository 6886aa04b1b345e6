from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ml.distillation.recipe import DistillRecipe, MetricPoint, RecipeConfig, TrainOutcome
from ml.evaluation.generation import greedy_generate
from ml.loading import check_model_dir, load_causal_lm, load_tokenizer

Pairs = tuple[list[tuple[str, str]], list[tuple[str, str]]]


class Recorder:
    """Collects what a recipe reports through its callables."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.batches: list[list[MetricPoint]] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.stop_after = stop_after
        self.stop_checks = 0

    def should_stop(self) -> bool:
        self.stop_checks += 1
        return self.stop_after is not None and self.stop_checks > self.stop_after

    def series(self, key: str) -> dict[int, float]:
        return {p.step: p.value for batch in self.batches for p in batch if p.key == key}

    def recipe(self, config: RecipeConfig) -> DistillRecipe:
        return DistillRecipe(
            config,
            metrics_sink=self.batches.append,
            event_sink=lambda level, message, data: self.events.append((level, message, data)),
            should_stop=self.should_stop,
            on_checkpoint=lambda step, path: self.checkpoints.append((step, path)),
        )


def straight_run(config: RecipeConfig) -> Recorder:
    """One uninterrupted run to the end."""
    recorder = Recorder()
    recipe = recorder.recipe(config)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return recorder


def interrupted_then_resumed(
    make_config: Callable[..., RecipeConfig], checkpoint_dir: Path, stop_after: int, **common: Any
) -> tuple[Recorder, Recorder]:
    """A run stopped after ``stop_after`` steps (a checkpoint must be written there), then a
    fresh recipe resumed from that checkpoint to the end: ``(stopped, resumed)`` recorders."""
    stopped = Recorder(stop_after=stop_after)
    first = stopped.recipe(make_config(checkpoint_dir=checkpoint_dir, **common))
    first.setup()
    assert first.train() == TrainOutcome(stopped=True, step=stop_after)
    first.cleanup()
    assert stopped.checkpoints[-1][0] == stop_after
    resumed = Recorder()
    second = resumed.recipe(make_config(checkpoint_dir=checkpoint_dir, **common))
    second.setup(resume_from=stopped.checkpoints[-1][1])
    second.train()
    second.cleanup()
    return stopped, resumed


def test_resume_reproduces_the_uninterrupted_losses(
    make_config: Callable[..., RecipeConfig], tmp_path: Path
) -> None:
    common = {"max_steps": 6, "grad_accum": 2, "checkpoint_every": 3, "alpha_ce": 0.2}
    straight = Recorder()
    recipe = straight.recipe(make_config(checkpoint_dir=tmp_path / "a", **common))
    recipe.setup()
    assert recipe.total_steps == 6
    assert recipe.train().step == 6

    killed = Recorder(stop_after=3)
    first = killed.recipe(make_config(checkpoint_dir=tmp_path / "b", **common))
    first.setup()
    assert first.train() == TrainOutcome(stopped=True, step=3)
    assert [step for step, _ in killed.checkpoints] == [3]
    checkpoint = killed.checkpoints[0][1]
    assert checkpoint == tmp_path / "b" / "step_00000003"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng.safetensors",
        "trainer_state.json",
    ]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 3
    first.cleanup()

    resumed = Recorder()
    second = resumed.recipe(make_config(checkpoint_dir=tmp_path / "b", **common))
    second.setup(resume_from=checkpoint)
    assert ("info", "resumed from step 3", {"step": 3}) in resumed.events
    assert second.train().step == 6

    expected = straight.series("train/loss")
    got = resumed.series("train/loss")
    assert sorted(got) == [4, 5, 6]
    for key in ("train/loss", "train/loss_kd", "train/loss_ce", "train/lr", "train/grad_norm"):
        a = torch.tensor([straight.series(key)[s] for s in (4, 5, 6)], dtype=torch.float64)
        b = torch.tensor([resumed.series(key)[s] for s in (4, 5, 6)], dtype=torch.float64)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), key
    assert expected[1] != expected[4]  # the run actually trains


def test_distillation_lowers_the_loss_and_reports_metrics(
    make_config: Callable[..., RecipeConfig],
) -> None:
    recorder = Recorder()
    student_config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    config = make_config(
        student_init={"config": student_config | {"num_attention_heads": 2}},
        max_steps=24,
        lr=5e-3,
        eval_every=12,
    )
    recipe = recorder.recipe(config)
    recipe.setup()
    outcome = recipe.train()
    losses = recorder.series("train/loss")
    assert sorted(losses) == list(range(1, 25))
    early, late = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (22, 23, 24)) / 3
    assert late < 0.7 * early
    assert not outcome.stopped and set(outcome.eval) == {
        "loss",
        "exact_match",
        "rouge_l",
        "examples",
    }
    keys = {p.key for batch in recorder.batches for p in batch}
    assert {"train/loss", "train/loss_kd", "train/loss_ce", "train/lr", "train/grad_norm"} <= keys
    assert {"train/tokens_per_s", "eval/loss", "eval/exact_match", "eval/rouge_l"} <= keys
    assert sorted(recorder.series("eval/loss")) == [12, 24]
    assert all(len(batch) > 1 for batch in recorder.batches)  # batched, not one row per call
    setup_event = next(e for e in recorder.events if e[1] == "setup done")
    assert setup_event[2]["total_steps"] == 24 and setup_event[2]["device"] == "cpu"


def test_gradient_accumulation_matches_one_big_batch(
    make_config: Callable[..., RecipeConfig],
) -> None:
    results = []
    for batch_size, grad_accum in ((16, 1), (8, 2)):
        recorder = Recorder()
        recipe = recorder.recipe(
            make_config(max_steps=2, batch_size=batch_size, grad_accum=grad_accum)
        )
        recipe.setup()
        recipe.train()
        results.append((recorder.series("train/loss"), recorder.series("train/grad_norm")))
    (loss_a, norm_a), (loss_b, norm_b) = results
    for step in (1, 2):
        assert loss_a[step] == pytest.approx(loss_b[step], rel=1e-4)
        assert norm_a[step] == pytest.approx(norm_b[step], rel=1e-3)


def test_should_stop_is_checked_between_steps(make_config: Callable[..., RecipeConfig]) -> None:
    recorder = Recorder(stop_after=2)
    recipe = recorder.recipe(make_config(max_steps=10))
    recipe.setup()
    outcome = recipe.train()
    assert outcome.stopped and outcome.step == 2
    assert sorted(recorder.series("train/loss")) == [1, 2]  # flushed before returning
    assert any(message == "stop requested" for _, message, _ in recorder.events)


def test_saved_student_reloads_and_generates(
    make_config: Callable[..., RecipeConfig], tmp_path: Path, tiny_teacher_dir: Path
) -> None:
    recipe = Recorder().recipe(make_config(max_steps=2))
    recipe.setup()
    recipe.train()
    recipe.save_student(tmp_path / "student")
    check_model_dir(tmp_path / "student")
    model = load_causal_lm(tmp_path / "student")
    tokenizer = load_tokenizer(tmp_path / "student")
    assert model.config.num_hidden_layers == 1
    assert tokenizer.get_vocab() == load_tokenizer(tiny_teacher_dir).get_vocab()
    texts = greedy_generate(
        model, tokenizer, ["### Instruction:\nAdd 1 and 2.\n"], max_new_tokens=3
    )
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert recipe.student is not None
    for name, tensor in recipe.student.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    recipe.cleanup()
    assert recipe.student is None and recipe.teacher is None


def test_ce_without_teacher_fine_tunes_a_student_dir(
    make_config: Callable[..., RecipeConfig], tiny_teacher_dir: Path
) -> None:
    recorder = Recorder()
    config = make_config(
        teacher_path=None, student_path=tiny_teacher_dir, student_init=None, loss="ce", max_steps=2
    )
    recipe = recorder.recipe(config)
    recipe.setup()
    assert recipe.train().step == 2
    assert "train/loss_kd" not in {p.key for batch in recorder.batches for p in batch}
    assert recorder.series("train/loss") == recorder.series("train/loss_ce")
    with pytest.raises(ValueError, match="teacher"):
        recipe.evaluate("teacher")


def test_teacher_can_be_evaluated(make_config: Callable[..., RecipeConfig]) -> None:
    recipe = Recorder().recipe(make_config(max_steps=1))
    recipe.setup()
    assert recipe.evaluate("teacher")["examples"] == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"teacher_path": None}, "teacher_path"),
        ({"loss": "mystery"}, "loss"),
        ({"schedule": "step"}, "schedule"),
        ({"checkpoint_every": 5}, "checkpoint_dir"),
        ({"student_init": None}, "student"),
    ],
)
def test_bad_configs_are_rejected(
    make_config: Callable[..., RecipeConfig], overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Recorder().recipe(make_config(**overrides))
