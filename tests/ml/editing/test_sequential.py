"""Sequential editing: a curve every k edits, and a collapse stop that leaves the last good
state."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ml.editing.grace import find_grace
from ml.editing.sequential import run_sequential_edits

FT = {"layers": [1], "steps": 3, "lr": 1e-2, "max_change": 1e-3}


def test_curve_has_a_point_every_k_edits_with_retention(
    world_tokenizer: Any, world_requests: list[Any]
) -> None:
    from tests.ml.editing.conftest import tiny_llama

    model, original = tiny_llama(world_tokenizer), tiny_llama(world_tokenizer)
    seen: list[int] = []
    result = run_sequential_edits(
        model, original, world_tokenizer, world_requests[:5], method="ft", hparams=FT, every=2,
        heldout_texts=["Vaedrou is a city in Vouxdi."], on_point=lambda p: seen.append(p["edits"]),
    )  # fmt: skip
    assert [p["edits"] for p in result.curve] == seen == [2, 4, 5]
    assert "retention" not in result.curve[0]
    assert result.curve[1]["retention"]["n"] == 2 and result.curve[2]["retention"]["n"] == 4
    assert result.curve[2]["newest"]["reliability"]["n"] == 1
    assert result.stopped is None and result.applied == 5 and len(result.deltas) == 5
    assert result.curve[0]["perplexity"] > 1.0


def test_collapse_stops_and_keeps_the_last_good_state(
    world_tokenizer: Any, world_requests: list[Any]
) -> None:
    from tests.ml.editing.conftest import tiny_llama

    model, original = tiny_llama(world_tokenizer), tiny_llama(world_tokenizer)
    first = run_sequential_edits(
        model, original, world_tokenizer, world_requests[:2], method="ft", hparams=FT, every=2
    )
    good_state = copy.deepcopy(model.state_dict())
    locality = first.curve[0]["newest"]["locality"]["teacher_forced"]
    # any further block whose locality is under an impossible bar is undone
    result = run_sequential_edits(
        model, original, world_tokenizer, world_requests[2:4], method="ft", hparams=FT, every=2,
        min_locality=1.01,
    )  # fmt: skip
    assert result.applied == 0 and result.stopped is not None and "locality" in result.stopped
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, good_state[name]), name
    assert 0.0 <= locality <= 1.0


def test_grace_collapse_restores_the_last_good_codebook(
    world_tokenizer: Any, world_requests: list[Any]
) -> None:
    from tests.ml.editing.conftest import tiny_llama

    model, original = tiny_llama(world_tokenizer), tiny_llama(world_tokenizer)
    result = run_sequential_edits(
        model, original, world_tokenizer, world_requests[:4], method="grace",
        hparams={"layer": 1, "steps": 3}, every=2, min_locality=1.01,
    )  # fmt: skip
    assert result.applied == 0
    assert find_grace(model) is None
