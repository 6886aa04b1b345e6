"""The chunked KD path equals the plain one: values, gradients, and a whole recipe run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ml.distillation.chunked import (
    check_logits_from_hidden,
    chunked_kd_ce_sums,
    chunked_kd_loss,
)
from ml.distillation.losses import KD_METHODS, ce_loss, kd_loss
from ml.distillation.recipe import RecipeConfig
from tests.ml.test_recipe import Recorder

PARAMS: dict[str, dict[str, float]] = {
    "taid": {"t": 0.55},
    "atkd": {"k": 4, "ratio": 0.4},
    "jsd": {"beta": 0.3},
}
BATCH, SEQ, HIDDEN, TEACHER_HIDDEN, VOCAB = 3, 7, 8, 12, 19


def _inputs(seed: int, bias: bool = False) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    mask = torch.rand(BATCH, SEQ, generator=generator) > 0.35
    return {
        "student_hidden": randn(BATCH, SEQ, HIDDEN),
        "student_weight": randn(VOCAB, HIDDEN, scale=0.5),
        "student_bias": randn(VOCAB, scale=0.1) if bias else None,
        "teacher_hidden": randn(BATCH, SEQ, TEACHER_HIDDEN),
        "teacher_weight": randn(VOCAB, TEACHER_HIDDEN, scale=0.6),
        "teacher_bias": randn(VOCAB, scale=0.1) if bias else None,
        "mask": mask,
        "labels": torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator),
    }


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(hidden, weight, bias)


@pytest.mark.parametrize("method", KD_METHODS)
@pytest.mark.parametrize("chunk_tokens", [1, 4, 1000])
def test_chunked_equals_plain_values_and_gradients(method: str, chunk_tokens: int) -> None:
    data = _inputs(0, bias=chunk_tokens == 4)
    params = PARAMS.get(method, {})
    leaves = {
        name: data[name].clone().requires_grad_(True)
        for name in ("student_hidden", "student_weight")
    }
    student_logits = _logits(
        leaves["student_hidden"], leaves["student_weight"], data["student_bias"]
    )
    teacher_logits = _logits(data["teacher_hidden"], data["teacher_weight"], data["teacher_bias"])
    plain = kd_loss(
        student_logits, teacher_logits, method=method, mask=data["mask"], temperature=1.3, **params
    )
    plain_grads = torch.autograd.grad(plain, list(leaves.values()))

    chunk_leaves = {name: data[name].clone().requires_grad_(True) for name in leaves}
    chunked = chunked_kd_loss(
        chunk_leaves["student_hidden"],
        chunk_leaves["student_weight"],
        data["teacher_hidden"],
        data["teacher_weight"],
        method=method,
        mask=data["mask"],
        temperature=1.3,
        chunk_tokens=chunk_tokens,
        student_bias=data["student_bias"],
        teacher_bias=data["teacher_bias"],
        **params,
    )
    chunked_grads = torch.autograd.grad(chunked, list(chunk_leaves.values()))
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(chunked_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sums_match_kd_and_ce_sums() -> None:
    data = _inputs(1)
    labels = data["labels"].masked_fill(~data["mask"], -100)
    student_logits = _logits(data["student_hidden"], data["student_weight"], None)
    teacher_logits = _logits(data["teacher_hidden"], data["teacher_weight"], None)
    kd_sum, ce_sum = chunked_kd_ce_sums(
        data["student_hidden"],
        data["student_weight"],
        data["teacher_hidden"],
        data["teacher_weight"],
        method="skl",
        mask=data["mask"],
        labels=labels,
        chunk_tokens=5,
        alpha=0.2,
    )
    expected_kd = kd_loss(
        student_logits, teacher_logits, method="skl", mask=data["mask"], reduction="sum", alpha=0.2
    )
    assert kd_sum.item() == pytest.approx(expected_kd.item(), rel=1e-5)
    assert ce_sum.item() == pytest.approx(
        ce_loss(student_logits, labels, reduction="sum").item(), rel=1e-5
    )


def test_all_masked_gives_zero_and_zero_gradients() -> None:
    data = _inputs(2)
    hidden = data["student_hidden"].clone().requires_grad_(True)
    weight = data["student_weight"].clone().requires_grad_(True)
    for reduction in ("mean", "sum"):
        value = chunked_kd_loss(
            hidden,
            weight,
            data["teacher_hidden"],
            data["teacher_weight"],
            method="jsd",
            mask=torch.zeros_like(data["mask"]),
            reduction=reduction,
        )
        grads = torch.autograd.grad(value, [hidden, weight])
        assert value.item() == 0.0
        assert all(torch.all(g == 0) for g in grads)


def test_bad_arguments_are_rejected() -> None:
    data = _inputs(3)
    args = (
        data["student_hidden"],
        data["student_weight"],
        data["teacher_hidden"],
        data["teacher_weight"],
    )
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_kd_loss(*args, method="fkl", mask=data["mask"], chunk_tokens=0)
    with pytest.raises(ValueError, match="allowed"):
        chunked_kd_loss(*args, method="kl", mask=data["mask"])
    with pytest.raises(ValueError, match="mask"):
        chunked_kd_loss(*args, method="fkl", mask=data["mask"][:, :3])


class _ScaledLogits(LlamaForCausalLM):
    """Applies a logit scale after the head, like Cohere's ``logit_scale``."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = super().forward(*args, **kwargs)
        output.logits = output.logits * 2.0
        return output


def test_models_whose_logits_are_not_the_head_of_the_hidden_state_are_refused() -> None:
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    check_logits_from_hidden(LlamaForCausalLM(config), name="student")
    with pytest.raises(ValueError, match="kd_chunk_tokens"):
        check_logits_from_hidden(_ScaledLogits(config), name="teacher")


@pytest.mark.parametrize(("loss", "loss_params"), [("fkl", {}), ("taid", {}), ("atkd", {"k": 8})])
def test_recipe_losses_are_the_same_with_and_without_chunking(
    make_config: Callable[..., RecipeConfig], loss: str, loss_params: dict[str, float]
) -> None:
    series = []
    for chunk in (0, 48):
        recorder = Recorder()
        config = make_config(
            loss=loss,
            loss_params=loss_params,
            max_steps=3,
            grad_accum=2,
            alpha_ce=0.3,
            kd_chunk_tokens=chunk,
        )
        recipe = recorder.recipe(config)
        recipe.setup()
        recipe.train()
        series.append(
            {
                key: recorder.series(key)
                for key in ("train/loss", "train/loss_kd", "train/loss_ce", "train/grad_norm")
            }
        )
    plain, chunked = series
    for key, values in plain.items():
        assert sorted(values) == [1, 2, 3], key
        for step in (1, 2, 3):
            assert chunked[key][step] == pytest.approx(values[step], rel=2e-5), (key, step)


def test_a_lora_wrapped_student_is_chunkable() -> None:
    from peft import LoraConfig, get_peft_model

    from ml.distillation.chunked import shifted_model_kd_ce_sums

    config = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(1)
    teacher = LlamaForCausalLM(config)
    student = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
    )
    check_logits_from_hidden(student, name="student")
    inputs = {"input_ids": torch.randint(0, 16, (2, 6)), "attention_mask": torch.ones(2, 6).long()}
    labels = torch.randint(0, 16, (2, 5))
    labels[0, :2] = -100
    kd_sum, ce_sum = shifted_model_kd_ce_sums(
        student, teacher, inputs, labels, method="rkl", temperature=1.0, chunk_tokens=3, params={}
    )
    logits = student(**inputs).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits[:, :-1]
    mask = labels != -100
    expected = kd_loss(logits, teacher_logits, method="rkl", mask=mask, reduction="sum")
    assert kd_sum.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ce_sum.item() == pytest.approx(ce_loss(logits, labels, reduction="sum").item(), rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_losses_are_the_same_with_and_without_chunking(
    make_config: Callable[..., RecipeConfig],
) -> None:
    series = []
    for chunk in (0, 64):
        recorder = Recorder()
        config = make_config(
            device="cuda", loss="jsd", max_steps=3, alpha_ce=0.2, kd_chunk_tokens=chunk
        )
        recipe = recorder.recipe(config)
        recipe.setup()
        recipe.train()
        series.append(recorder.series("train/loss"))
    plain, chunked = series
    for step in (1, 2, 3):  # bf16 logits: the two paths round differently
        assert chunked[step] == pytest.approx(plain[step], rel=2e-2)
