"""The CUDA path: bf16 autocast on the GPU, and resume to the same numbers there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ml.distillation.recipe import RecipeConfig
from tests.ml.test_recipe import Recorder, interrupted_then_resumed, straight_run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_run_trains_in_bf16_autocast(make_config: Callable[..., RecipeConfig]) -> None:
    recorder = Recorder()
    recipe = recorder.recipe(make_config(device="cuda", max_steps=16, lr=5e-3, eval_every=16))
    recipe.setup()
    assert next(recipe.student.parameters()).device.type == "cuda"
    outcome = recipe.train()
    losses = recorder.series("train/loss")
    assert sorted(losses) == list(range(1, 17)) and all(
        torch.isfinite(torch.tensor(list(losses.values())))
    )
    assert sum(losses[s] for s in (14, 15, 16)) < sum(losses[s] for s in (1, 2, 3))
    assert outcome.eval["examples"] > 0
    # master weights stay float32; autocast computes the matmuls in bf16
    assert next(recipe.student.parameters()).dtype == torch.float32
    with recipe._autocast():
        x = torch.ones(2, 2, device="cuda")
        assert (x @ x).dtype == torch.bfloat16
    recipe.cleanup()


def test_cuda_resume_matches_the_uninterrupted_run(
    make_config: Callable[..., RecipeConfig], tmp_path: Path
) -> None:
    common = {"device": "cuda", "max_steps": 6, "checkpoint_every": 3}
    straight = straight_run(make_config(checkpoint_dir=tmp_path / "a", **common))
    _, resumed = interrupted_then_resumed(make_config, tmp_path / "b", 3, **common)
    x = torch.tensor([straight.series("train/loss")[s] for s in (4, 5, 6)])
    y = torch.tensor([resumed.series("train/loss")[s] for s in (4, 5, 6)])
    # GPU kernels are not bit-deterministic run to run; bf16 differences stay small.
    assert torch.allclose(x, y, rtol=2e-2), (x, y)
