"""run_injection on a tiny model: each method lowers its own loss, only the adapter moves, the
teacher (the frozen base) never changes, and bad inputs are refused before any training."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from ml.injection.params import METHODS
from ml.injection.qa import InjectionInputError, QAPair
from ml.injection.run import run_injection

FAST = {"steps": 30, "lr": 1e-2, "batch_size": 8, "warmup_steps": 2}


def _mean(history: list[dict[str, float]], part: slice) -> float:
    losses = [h["loss"] for h in history[part]]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_its_own_training_loss(
    method: str, tiny_lm: Any, injection_tokenizer: Any, injection_documents: list[str]
) -> None:
    steps: list[int] = []
    outcome = run_injection(
        tiny_lm,
        injection_tokenizer,
        method=method,
        documents=injection_documents,
        qa_pairs=None,
        params=FAST,
        lora={"r": 8, "alpha": 16},
        on_metrics=lambda step, metrics: steps.append(step),
    )
    assert steps == list(range(1, 31))
    assert len(outcome.history) == 30
    assert _mean(outcome.history, slice(-5, None)) < 0.8 * _mean(outcome.history, slice(0, 5))
    assert outcome.history[-1]["loss"] < outcome.history[0]["loss"]
    assert (len(outcome.qa_pairs) == 0) == (method == "sft_docs")


def test_only_the_adapter_changes_and_the_teacher_stays_the_base(
    tiny_lm: Any, injection_tokenizer: Any, injection_documents: list[str]
) -> None:
    original = copy.deepcopy(tiny_lm)
    before = {name: p.detach().clone() for name, p in tiny_lm.named_parameters()}
    outcome = run_injection(
        tiny_lm,
        injection_tokenizer,
        method="prompt_distillation",
        documents=injection_documents,
        qa_pairs=None,
        params={**FAST, "steps": 10},
        lora=None,
    )
    model = outcome.model
    moved = 0
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            assert parameter.requires_grad
            moved += int(name.endswith("lora_B.default.weight") and bool(parameter.abs().sum() > 0))
        else:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert not parameter.requires_grad, name
            torch.testing.assert_close(parameter, before[key], atol=0, rtol=0)
    # the default adapter covers attention and MLP projections of every layer
    assert moved == 2 * 7
    ids = torch.tensor([injection_tokenizer.encode(injection_documents[0])])
    with torch.no_grad(), model.disable_adapter():
        teacher = model(input_ids=ids).logits
    torch.testing.assert_close(teacher, original(input_ids=ids).logits)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, teacher)


def test_should_stop_ends_training_between_steps(
    tiny_lm: Any, injection_tokenizer: Any, injection_documents: list[str]
) -> None:
    calls = iter(range(100))
    outcome = run_injection(
        tiny_lm,
        injection_tokenizer,
        method="sft_qa",
        documents=injection_documents,
        qa_pairs=None,
        params=FAST,
        lora=None,
        should_stop=lambda: next(calls) >= 3,
    )
    assert outcome.stopped
    assert [h["step"] for h in outcome.history] == [1.0, 2.0, 3.0]


def test_sampled_answers_come_from_the_document_reading_teacher(
    tiny_lm: Any, injection_tokenizer: Any, injection_documents: list[str]
) -> None:
    pairs = [QAPair("The birthplace of X is", " Lumo", 0)]
    outcome = run_injection(
        tiny_lm,
        injection_tokenizer,
        method="prompt_distillation",
        documents=injection_documents[:2],
        qa_pairs=pairs,
        params={**FAST, "steps": 5, "answers": "sampled", "samples_per_question": 3},
        lora=None,
    )
    assert len(outcome.history) == 5
    assert all(h["loss"] >= 0 for h in outcome.history)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"method": "rome"}, "method.name"),
        ({"params": {"steps": 0}}, "method.params.steps"),
        ({"params": {"lr": -1.0}}, "method.params.lr"),
        ({"params": {"lr": True}}, "method.params.lr"),
        ({"params": {"epochs": 3}}, "method.params.epochs"),
        ({"params": {"loss": "mse"}}, "method.params.loss"),
        ({"params": {"answers": "beam"}}, "method.params.answers"),
        ({"method": "sft_qa", "params": {"temperature": 2.0}}, "method.params.temperature"),
        ({"params": {"warmup_steps": 50, "steps": 10}}, "method.params.warmup_steps"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"lora": {"alpha": 0}}, "lora.alpha"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"lora": {"target_modules": ["c_attn"]}}, "lora.target_modules"),
        ({"lora": {"rank": 4}}, "lora.rank"),
        ({"documents": []}, "documents"),
        ({"documents": ["Ana was born in Lumo.", ""]}, "documents[1]"),
        ({"qa_pairs": [QAPair("Ana was born in", " Lumo", 9)]}, "qa_pairs[0].document"),
        ({"documents": ["Ana Rel was born in Lumo. " * 12]}, "documents[0]"),
        (
            {"method": "sft_docs", "documents": ["x", "Ana Rel was born in Lumo. " * 12]},
            "documents[1]",
        ),
    ],
)
def test_bad_inputs_name_the_field_and_train_nothing(
    overrides: dict[str, Any],
    field: str,
    tiny_lm: Any,
    injection_tokenizer: Any,
    injection_documents: list[str],
) -> None:
    arguments: dict[str, Any] = {
        "method": "prompt_distillation",
        "documents": injection_documents,
        "qa_pairs": None,
        "params": FAST,
        "lora": None,
    }
    arguments.update(overrides)
    with pytest.raises(InjectionInputError) as caught:
        run_injection(tiny_lm, injection_tokenizer, **arguments)
    assert caught.value.field == field
    assert not any("lora_" in name for name, _ in tiny_lm.named_parameters())
