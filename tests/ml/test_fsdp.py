"""Sharded students (``RecipeConfig.fsdp``, ml/distillation/sharding.py) against one process.

Two real gloo processes shard the tiny student with FSDP2 (``fully_shard``) and train on the
same global batches as one process. The loss curve and the saved student must match the
one-process run within float32 summation noise; evaluation runs on both ranks in step; the
checkpoints are in the one-process format, so they resume in one process and on FSDP ranks."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ml.distillation.distributed import leave_world
from ml.distillation.recipe import RecipeConfig
from ml.distillation.sharding import decoder_layers
from ml.loading import load_causal_lm
from tests.ml.test_distributed import (
    _free_port,
    assert_same_curve,
    join_and_build,
    one_process,
)
from tests.ml.test_recipe import Recorder

WEIGHT_ATOL = 1e-5  # as for replicated ranks (tests/ml/test_distributed.py)


def _rank_main(rank: int, world_size: int, port: int, config_json: str, out: str,
               stop_after: int | None, resume_from: str | None) -> None:  # fmt: skip
    """One FSDP rank: train; rank 0 then checkpoints (when stopped, as a pause does) or saves
    the student, alone, after the other rank has gone."""
    world, recorder, recipe = join_and_build(rank, world_size, port, config_json, stop_after)
    recipe.setup(resume_from=Path(resume_from) if resume_from else None)
    assert recipe.student is not None
    sharded = type(recipe.student).__name__.startswith("FSDP")
    outcome = recipe.train()
    leave_world(world)  # what rank 0 does next needs no other rank
    if rank == 0:
        if outcome.stopped:
            recipe.save_checkpoint()
        else:
            recipe.save_student(Path(out) / "student")
    record = {
        "step": outcome.step,
        "stopped": outcome.stopped,
        "sharded": sharded,
        "eval": outcome.eval,
        "loss": recorder.series("train/loss"),
        "grad_norm": recorder.series("train/grad_norm"),
        "n_metric_points": sum(len(b) for b in recorder.batches),
        "checkpoints": [[step, str(path)] for step, path in recorder.checkpoints],
    }
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(record))
    recipe.cleanup()


def run_fsdp(config: RecipeConfig, out: Path, *, stop_after: int | None = None,
             resume_from: Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    args = (2, _free_port(), replace(config, fsdp=True).to_json(), str(out), stop_after,
            str(resume_from) if resume_from else None)  # fmt: skip
    mp.spawn(_rank_main, args=args, nprocs=2, join=True)
    records = []
    for rank in range(2):
        record = json.loads((out / f"rank{rank}.json").read_text())
        for key in ("loss", "grad_norm"):
            record[key] = {int(k): v for k, v in record[key].items()}
        records.append(record)
    return records


def saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in load_causal_lm(directory).state_dict().items()}


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    worst = max(float((got[k] - want[k].to(got[k].dtype)).abs().max()) for k in want)
    assert worst <= WEIGHT_ATOL, worst


def test_decoder_layers_are_found_from_the_architecture(tiny_teacher_dir: Path) -> None:
    model = load_causal_lm(tiny_teacher_dir)
    layers = decoder_layers(model)
    assert layers == list(model.model.layers)  # type: ignore[union-attr]


def test_fsdp_needs_an_offline_same_vocabulary_full_student(
    make_config: Callable[..., RecipeConfig],
) -> None:
    for overrides, text in [
        ({"data_mode": "onpolicy"}, "data_mode 'offline'"),
        ({"lora": {"r": 4}}, "not with lora"),
        ({"kd_chunk_tokens": 16}, "kd_chunk_tokens must be 0"),
    ]:
        with pytest.raises(ValueError, match=text):
            make_config(fsdp=True, **overrides).validate()


def test_two_fsdp_ranks_match_one_process(
    make_config: Callable[..., RecipeConfig], tmp_path: Path
) -> None:
    # 33 records in micro-batches of 8: rank 1's share of each epoch's last micro-batch is
    # empty, so it runs a zero-weighted stand-in (every sharded forward is a collective).
    config = make_config(train_records=make_config().train_records[:33], grad_accum=2,
                         max_steps=6, alpha_ce=0.2, eval_every=3,
                         checkpoint_dir=tmp_path / "ckpt", checkpoint_every=3)  # fmt: skip
    single = Recorder()
    recipe = single.recipe(replace(config, checkpoint_dir=tmp_path / "one"))
    recipe.setup()
    single_outcome = recipe.train()
    recipe.save_student(tmp_path / "one-student")
    recipe.cleanup()

    ranks = run_fsdp(config, tmp_path / "ranks")
    assert [r["sharded"] for r in ranks] == [True, True]
    assert_same_curve(ranks[0]["loss"], single.series("train/loss"))
    # Gradients are summed over ranks, not averaged (AdamW would hide a factor in the loss).
    assert_same_curve(ranks[0]["grad_norm"], single.series("train/grad_norm"))
    # Both ranks evaluated (in step); their results equal the one-process evaluation.
    assert ranks[0]["eval"] == ranks[1]["eval"]
    assert ranks[0]["eval"]["loss"] == pytest.approx(single_outcome.eval["loss"], rel=1e-4)
    # Greedy answers may flip on a near-tie under float32 noise: at most one of the 8 examples.
    for key in ("exact_match", "rouge_l"):
        assert abs(ranks[0]["eval"][key] - single_outcome.eval[key]) <= 1 / 8 + 1e-9, key
    assert ranks[1]["n_metric_points"] == 0  # rank 1 records nothing
    assert [c[0] for c in ranks[0]["checkpoints"]] == [3, 6]
    assert_close(saved_weights(tmp_path / "ranks" / "student"),
                 saved_weights(tmp_path / "one-student"))  # fmt: skip
    # The step-3 checkpoint is a one-process checkpoint: its weights equal the one process's.
    fsdp_ckpt = load_file(tmp_path / "ckpt" / "step_00000003" / "model.safetensors")
    one_ckpt = load_file(tmp_path / "one" / "step_00000003" / "model.safetensors")
    assert_close(fsdp_ckpt, one_ckpt)


def test_a_stopped_fsdp_run_resumes_in_one_process_and_on_fsdp_ranks(
    make_config: Callable[..., RecipeConfig], tmp_path: Path
) -> None:
    config = make_config(grad_accum=2, max_steps=5, eval_records=[],
                         checkpoint_dir=tmp_path / "ckpt")  # fmt: skip
    single, single_weights = one_process(replace(config, checkpoint_dir=tmp_path / "one"))
    first = run_fsdp(config, tmp_path / "first", stop_after=3)
    assert [(r["step"], r["stopped"]) for r in first] == [(3, True), (3, True)]
    stopped_at = tmp_path / "ckpt" / "step_00000003"  # written by rank 0 after the ranks parted

    # In one process, from the FSDP checkpoint (optimizer state included): the same run.
    resumed = Recorder()
    recipe = resumed.recipe(replace(config, checkpoint_dir=tmp_path / "resumed"))
    recipe.setup(resume_from=stopped_at)
    recipe.train()
    assert recipe.student is not None
    resumed_weights = {k: v.detach().clone() for k, v in recipe.student.state_dict().items()}
    recipe.cleanup()
    assert_same_curve({**first[0]["loss"], **resumed.series("train/loss")},
                      single.series("train/loss"))  # fmt: skip
    assert_close(resumed_weights, single_weights)

    # On FSDP ranks again, from the same checkpoint.
    second = run_fsdp(config, tmp_path / "second", resume_from=stopped_at)
    assert sorted(second[0]["loss"]) == [4, 5]
    assert_same_curve({**first[0]["loss"], **second[0]["loss"]}, single.series("train/loss"))
    assert_close(saved_weights(tmp_path / "second" / "student"), single_weights)
