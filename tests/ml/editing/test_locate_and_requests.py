"""Locating projections on LLaMA and GPT-2, and parsing edit requests."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from ml.data.facts_world import build_world, edit_requests
from ml.editing.locate import (
    LayerOutOfRangeError,
    UnsupportedArchitectureError,
    projection_site,
    subject_last_token,
)
from ml.editing.requests import EditRequestError, parse_edit_request, parse_edit_requests
from tests.ml.editing.conftest import tiny_gpt2, tiny_llama


def test_llama_projection_is_down_proj(world_tokenizer: Any) -> None:
    site = projection_site(tiny_llama(world_tokenizer), 1)
    assert site.name == "model.layers.1.mlp.down_proj"
    assert (site.transposed, site.in_features, site.out_features) == (False, 64, 32)


def test_gpt2_projection_is_transposed_c_proj(world_tokenizer: Any) -> None:
    site = projection_site(tiny_gpt2(world_tokenizer), -1)
    assert site.name == "transformer.h.2.mlp.c_proj"
    assert (site.transposed, site.in_features, site.out_features) == (True, 128, 32)


def test_weight_out_in_computes_the_module_output(tiny_model: Any) -> None:
    site = projection_site(tiny_model, 0)
    key = torch.randn(3, site.in_features)
    with torch.no_grad():
        expected = site.module(key)
    bias = getattr(site.module, "bias", None)
    got = key @ site.weight_out_in().t() + (bias if bias is not None else 0)
    torch.testing.assert_close(got, expected)


def test_add_respects_the_layout(tiny_model: Any) -> None:
    site = projection_site(tiny_model, 1)
    key = torch.randn(site.in_features)
    shift = torch.randn(site.out_features)
    before = site.module(key).detach()
    site.add_(torch.outer(shift, key) / key.dot(key))
    torch.testing.assert_close(site.module(key).detach(), before + shift, rtol=1e-4, atol=1e-4)


def test_layer_out_of_range_names_the_field(tiny_model: Any) -> None:
    with pytest.raises(LayerOutOfRangeError) as raised:
        projection_site(tiny_model, 3)
    assert raised.value.field == "method.params.layers"
    assert "0..2" in str(raised.value)


class _NoMlpBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(4, 4)


class _OddModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = PretrainedConfig(num_hidden_layers=2, hidden_size=4)
        self.blocks = nn.ModuleList([_NoMlpBlock(), _NoMlpBlock()])


def test_unsupported_architecture_is_a_typed_error() -> None:
    with pytest.raises(UnsupportedArchitectureError) as raised:
        projection_site(_OddModel(), 0)  # type: ignore[arg-type]
    assert raised.value.field == "model"


def test_subject_last_token_points_at_the_subject(world_tokenizer: Any) -> None:
    prompt = "The birthplace of Demfi Lekri is"
    index = subject_last_token(world_tokenizer, prompt, "Demfi Lekri")
    ids = [world_tokenizer.bos_token_id] + world_tokenizer.encode(prompt, add_special_tokens=False)
    assert world_tokenizer.decode(ids[1 : index + 1]) == "The birthplace of Demfi Lekri"


def test_world_records_parse() -> None:
    records = edit_requests(build_world(0), 4, seed=1)
    parsed = parse_edit_requests(records)
    assert [r.to_dict() for r in parsed] == records


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "Nobody Here"}, "subject"),
        ({"target_new": ""}, "target_new"),
        ({"prompt": 3}, "prompt"),
        ({"rephrase_prompts": "one"}, "rephrase_prompts"),
        ({"locality": [{"prompt": "x"}]}, "locality.0.answer"),
        ({"portability": ["x"]}, "portability.0"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_requests_name_the_field(change: dict[str, Any], field: str) -> None:
    record = {**edit_requests(build_world(0), 1)[0], **change}
    with pytest.raises(EditRequestError) as raised:
        parse_edit_requests([edit_requests(build_world(0), 1)[0], record])
    assert (raised.value.field, raised.value.index) == (field, 1)


def test_missing_field_is_reported() -> None:
    with pytest.raises(EditRequestError) as raised:
        parse_edit_request({"prompt": "a b", "subject": "a"}, index=7)
    assert (raised.value.field, raised.value.index) == ("target_new", 7)
