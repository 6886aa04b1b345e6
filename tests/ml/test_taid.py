"""TAID's adaptive schedule, and the recipe carrying it across steps and checkpoints."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ml.distillation.recipe import RecipeConfig
from ml.distillation.taid import TaidSchedule
from tests.ml.test_recipe import Recorder


def _run(schedule: TaidSchedule, losses: list[float]) -> list[float]:
    return [schedule.update(step, loss) for step, loss in enumerate(losses, start=1)]


def test_defaults_are_the_papers() -> None:
    schedule = TaidSchedule(total_steps=10)
    assert (schedule.t_start, schedule.t_end, schedule.alpha, schedule.beta) == (
        0.4,
        1.0,
        5e-4,
        0.99,
    )
    assert schedule.t == 0.4


def test_one_update_by_hand() -> None:
    schedule = TaidSchedule(total_steps=100, t_start=0.4, alpha=0.1, beta=0.5)
    # step 1: no previous loss, momentum 0, sigmoid(0) = 0.5
    t1 = schedule.update(1, 2.0)
    assert t1 == pytest.approx(max(0.4 + 0.6 / 100, 0.4 + 0.1 * 0.5 * 0.6))
    # step 2: relative change (2 - 1) / 2 = 0.5, momentum = 0.5 * 0.5 = 0.25
    t2 = schedule.update(2, 1.0)
    sigmoid = 1 / (1 + math.exp(-0.25))
    assert schedule.momentum == pytest.approx(0.25)
    assert t2 == pytest.approx(max(0.4 + 0.6 * 2 / 100, t1 + 0.1 * sigmoid * (1 - t1)))


def test_t_follows_at_least_the_linear_schedule_and_ends_at_t_end() -> None:
    schedule = TaidSchedule(total_steps=20, t_start=0.4, t_end=0.9)
    values = _run(schedule, [1.0] * 20)
    linear = [0.4 + 0.5 * n / 20 for n in range(1, 21)]
    assert all(t >= floor - 1e-12 for t, floor in zip(values, linear, strict=True))
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(0.9)
    assert max(values) <= 0.9


def test_a_falling_loss_moves_t_faster_than_a_rising_one() -> None:
    kwargs = {"total_steps": 1000, "alpha": 0.05}
    falling = _run(TaidSchedule(**kwargs), [1.0 / n for n in range(1, 30)])  # type: ignore[arg-type]
    rising = _run(TaidSchedule(**kwargs), [float(n) for n in range(1, 30)])  # type: ignore[arg-type]
    assert falling[-1] > rising[-1] > 0.4


def test_state_round_trips_through_json() -> None:
    first = TaidSchedule(total_steps=50, alpha=0.01)
    _run(first, [3.0, 2.5, 2.7, 2.1])
    restored = TaidSchedule(total_steps=50, alpha=0.01)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    later = [1.9, 2.0, 1.5]
    expected = [first.update(5 + i, loss) for i, loss in enumerate(later)]
    assert [restored.update(5 + i, loss) for i, loss in enumerate(later)] == expected
    with pytest.raises(ValueError, match="momentum"):
        restored.load_state_dict({"t": 0.5, "previous_loss": None})


def test_bad_schedules_are_rejected() -> None:
    with pytest.raises(ValueError, match="t_end"):
        TaidSchedule(total_steps=5, t_start=0.8, t_end=0.6)
    with pytest.raises(ValueError, match="beta"):
        TaidSchedule(total_steps=5, beta=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        TaidSchedule(total_steps=0)
    with pytest.raises(ValueError, match="non-finite"):
        TaidSchedule(total_steps=5).update(1, float("nan"))


def test_recipe_trains_with_taid_and_resumes_to_the_same_numbers(
    make_config: Callable[..., RecipeConfig], tmp_path: Path
) -> None:
    common = {
        "loss": "taid",
        "loss_params": {"t_start": 0.3, "alpha": 0.2},
        "max_steps": 6,
        "grad_accum": 2,
        "checkpoint_every": 3,
        "batch_size": 4,
    }
    straight = Recorder()
    recipe = straight.recipe(make_config(checkpoint_dir=tmp_path / "a", **common))
    recipe.setup()
    recipe.train()
    t_series = straight.series("train/taid_t")
    assert sorted(t_series) == [1, 2, 3, 4, 5, 6] and t_series[1] == 0.3
    assert all(t_series[s] < t_series[s + 1] for s in range(1, 6))

    killed = Recorder(stop_after=3)
    first = killed.recipe(make_config(checkpoint_dir=tmp_path / "b", **common))
    first.setup()
    first.train()
    checkpoint = killed.checkpoints[0][1]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert set(state["taid"]) == {"t", "momentum", "previous_loss"}
    assert state["taid"]["t"] == t_series[4]
    first.cleanup()

    resumed = Recorder()
    second = resumed.recipe(make_config(checkpoint_dir=tmp_path / "b", **common))
    second.setup(resume_from=checkpoint)
    second.train()
    for key in ("train/loss", "train/loss_kd", "train/taid_t", "train/grad_norm"):
        a = torch.tensor([straight.series(key)[s] for s in (4, 5, 6)], dtype=torch.float64)
        b = torch.tensor([resumed.series(key)[s] for s in (4, 5, 6)], dtype=torch.float64)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), key
