"""ROME, MEMIT, FT and GRACE on tiny random LLaMA and GPT-2 models: what each changes, that the
edit lands, and that restore gives back the original bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from ml.editing.apply import EditOutcome, apply_edits, reapply, restore
from ml.editing.covariance import KeyCovarianceStore
from ml.editing.grace import GraceAdaptor, find_grace, load_codebook, save_codebook
from ml.editing.locate import EditingError, LayerOutOfRangeError, projection_site
from ml.editing.rome import subject_keys

FAST_VALUES = {"steps": 6, "lr": 0.5, "stop_nll": 0.05}


def _ids(tokenizer: Any, prompt: str) -> torch.Tensor:
    return torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(prompt)]])


def original_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_restored(model: Any, original: dict[str, torch.Tensor], outcome: EditOutcome) -> None:
    restore(model, outcome.weight_delta)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[name]), name


@pytest.fixture()
def store(tmp_path: Path, world_corpus: list[str]) -> KeyCovarianceStore:
    return KeyCovarianceStore(tmp_path / "stats", world_corpus)


def test_rome_changes_one_projection_and_restores(
    tiny_model: Any, world_tokenizer: Any, world_requests: list[Any], store: KeyCovarianceStore
) -> None:
    original = _state(tiny_model)
    request = world_requests[0]
    site = projection_site(tiny_model, 1)
    outcome = apply_edits(
        tiny_model,
        world_tokenizer,
        [request],
        method="rome",
        hparams={"layer": 1, "values": FAST_VALUES},
        mode="single",
        stats=store,
    )
    assert list(outcome.weight_delta) == [site.weight_name]
    delta = outcome.weight_delta[site.weight_name]
    assert torch.linalg.matrix_rank(delta.float()) == 1
    _assert_restored(tiny_model, original, outcome)
    reapply(tiny_model, outcome.weight_delta)
    assert torch.equal(
        site.parameter.detach().double(), original[site.weight_name].double() + delta
    )


def test_rome_key_gets_the_searched_value(
    world_tokenizer: Any, world_requests: list[Any], store: KeyCovarianceStore
) -> None:
    from tests.ml.editing.conftest import tiny_llama

    model = tiny_llama(world_tokenizer)
    site = projection_site(model, 1)
    key = subject_keys(model, world_tokenizer, site, world_requests[:1], ("{}",))[0]
    before = site.module(key).detach()
    outcome = apply_edits(
        model,
        world_tokenizer,
        world_requests[:1],
        method="rome",
        hparams={"layer": 1, "values": FAST_VALUES},
        stats=store,
    )
    after = site.module(key).detach()
    delta = outcome.weight_delta[site.weight_name].float()
    torch.testing.assert_close(after - before, delta @ key, rtol=1e-4, atol=1e-5)


def test_covariance_is_computed_once_and_reused(
    tiny_model: Any, world_tokenizer: Any, tmp_path: Path, world_corpus: list[str]
) -> None:
    site = projection_site(tiny_model, 1)
    first = KeyCovarianceStore(tmp_path, world_corpus)
    moment = first.second_moment(tiny_model, world_tokenizer, site)
    assert first.computed == 1 and moment.shape == (site.in_features, site.in_features)
    torch.testing.assert_close(moment, moment.t())
    again = KeyCovarianceStore(tmp_path, world_corpus)
    torch.testing.assert_close(again.second_moment(tiny_model, world_tokenizer, site), moment)
    assert again.computed == 0
    other_corpus = KeyCovarianceStore(tmp_path, world_corpus[:50])
    other_corpus.second_moment(tiny_model, world_tokenizer, site)
    assert other_corpus.computed == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_memit_changes_only_its_layers(
    tiny_model: Any, world_tokenizer: Any, world_requests: list[Any], store: KeyCovarianceStore
) -> None:
    original = _state(tiny_model)
    outcome = apply_edits(
        tiny_model,
        world_tokenizer,
        world_requests[:4],
        method="memit",
        hparams={"layers": [0, 1], "mom2_weight": 1.0, "values": FAST_VALUES},
        mode="batch",
        stats=store,
    )
    names = {projection_site(tiny_model, layer).weight_name for layer in (0, 1)}
    assert set(outcome.weight_delta) == names
    for name in names:  # one update of rank <= the number of edits per layer
        assert int(torch.linalg.matrix_rank(outcome.weight_delta[name].float())) <= 4
    _assert_restored(tiny_model, original, outcome)


def test_ft_moves_only_chosen_layers_within_the_bound(
    tiny_model: Any, world_tokenizer: Any, world_requests: list[Any]
) -> None:
    original = _state(tiny_model)
    outcome = apply_edits(
        tiny_model,
        world_tokenizer,
        world_requests[:2],
        method="ft",
        hparams={"layers": [2], "steps": 10, "lr": 1e-2, "max_change": 2e-3},
    )
    site = projection_site(tiny_model, 2)
    assert list(outcome.weight_delta) == [site.weight_name]
    assert float(outcome.weight_delta[site.weight_name].abs().max()) <= 2e-3 + 1e-7
    _assert_restored(tiny_model, original, outcome)


def test_grace_adaptor_retrieves_within_radius_and_defers_outside() -> None:
    inner = torch.nn.Linear(3, 2)
    adaptor = GraceAdaptor(inner, 0, "x", 3, 2)
    adaptor.add_entry(torch.tensor([1.0, 0, 0]), torch.tensor([7.0, 7.0]), " A", radius=0.5)
    queries = torch.tensor([[[1.2, 0.0, 0.0], [1.0, 0.6, 0.0]]])  # distances 0.2 and 0.6
    output = adaptor(queries)
    torch.testing.assert_close(output[0, 0], torch.tensor([7.0, 7.0]))
    torch.testing.assert_close(output[0, 1], inner(queries[0, 1]))
    # same answer nearby: the radius grows, no new entry
    adaptor.add_entry(torch.tensor([1.0, 0.6, 0.0]), torch.tensor([7.0, 7.0]), " A", radius=0.5)
    assert adaptor.keys.shape[0] == 1 and float(adaptor.radii[0]) > 0.6
    # conflicting answer nearby: split, both radii are half the distance
    adaptor.add_entry(torch.tensor([1.0, 0.0, 0.4]), torch.tensor([0.0, 1.0]), " B", radius=0.5)
    assert adaptor.keys.shape[0] == 2
    torch.testing.assert_close(adaptor.radii, torch.tensor([0.2, 0.2]))


def test_grace_edits_saves_loads_and_detaches(
    tiny_model: Any, world_tokenizer: Any, world_requests: list[Any], tmp_path: Path
) -> None:
    original = _state(tiny_model)
    untouched = copy.deepcopy(tiny_model)
    outcome = apply_edits(
        tiny_model,
        world_tokenizer,
        world_requests[:2],
        method="grace",
        hparams={"layer": 1, "steps": 40, "lr": 0.5, "init_radius": 0.5},
        mode="sequential",
    )
    assert outcome.weight_delta == {}
    assert outcome.codebook is not None and outcome.codebook.keys.shape[0] == 2
    edited_prompt = _ids(world_tokenizer, world_requests[0].prompt)
    other_prompt = _ids(world_tokenizer, world_requests[0].locality[0].prompt)
    with torch.no_grad():
        # the edit prompt hits the codebook: its last position changes, earlier ones do not
        hit, base = tiny_model(edited_prompt).logits, original_logits(untouched, edited_prompt)
        assert not torch.allclose(hit[0, -1], base[0, -1])
        torch.testing.assert_close(hit[0, :-1], base[0, :-1])
        # an unrelated prompt defers to the layer
        torch.testing.assert_close(
            tiny_model(other_prompt).logits, original_logits(untouched, other_prompt)
        )
    path = tmp_path / "codebook.safetensors"
    save_codebook(outcome.codebook, path)
    loaded = load_codebook(untouched, path)
    torch.testing.assert_close(loaded.values, outcome.codebook.values)
    with torch.no_grad():
        torch.testing.assert_close(untouched(edited_prompt).logits, hit)
    _assert_restored(tiny_model, original, outcome)
    assert find_grace(tiny_model) is None


def test_bad_edit_settings_are_typed_errors(
    tiny_model: Any, world_tokenizer: Any, world_requests: list[Any], store: KeyCovarianceStore
) -> None:
    original = _state(tiny_model)
    with pytest.raises(LayerOutOfRangeError):
        apply_edits(
            tiny_model,
            world_tokenizer,
            world_requests[:1],
            method="rome",
            hparams={"layer": 9},
            stats=store,
        )
    cases = [
        ({"method": "lora"}, "method.name"),
        ({"method": "ft", "hparams": {"lyers": [1]}}, "method.params.lyers"),
        ({"method": "ft", "mode": "parallel"}, "mode"),
        ({"method": "ft", "mode": "single", "requests": world_requests[:2]}, "mode"),
        ({"method": "rome", "stats": None}, "method.name"),
    ]
    for kwargs, field in cases:
        requests = kwargs.pop("requests", world_requests[:1])
        with pytest.raises(EditingError) as raised:
            apply_edits(tiny_model, world_tokenizer, requests, **kwargs)
        assert raised.value.field == field
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
