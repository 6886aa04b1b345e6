from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ml.distillation.losses import KD_METHODS, ce_loss, kd_loss
from tests.ml.kd_reference import random_kd_inputs


def _reference_fkl(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float
) -> float:
    """Independent float64 loop: T^2 * sum_v p log(p / q), averaged over unmasked tokens."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for s in range(student.shape[1]):
            if not mask[b, s]:
                continue
            zs = [float(x) / temperature for x in student[b, s].double()]
            zt = [float(x) / temperature for x in teacher[b, s].double()]
            log_zs = math.log(sum(math.exp(z) for z in zs))
            log_zt = math.log(sum(math.exp(z) for z in zt))
            kl = 0.0
            for a, c in zip(zt, zs, strict=True):
                p, log_p, log_q = math.exp(a - log_zt), a - log_zt, c - log_zs
                kl += p * (log_p - log_q)
            total += temperature**2 * kl
            count += 1
    return total / count


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_fkl_matches_an_independent_loop(temperature: float) -> None:
    student, teacher, mask = random_kd_inputs(0)
    value = kd_loss(student, teacher, method="fkl", mask=mask, temperature=temperature)
    expected = _reference_fkl(student, teacher, mask, temperature)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_fkl_matches_torch_distributions() -> None:
    student, teacher, mask = random_kd_inputs(1)
    p = torch.distributions.Categorical(logits=teacher.double())
    q = torch.distributions.Categorical(logits=student.double())
    expected = torch.distributions.kl_divergence(p, q)[mask].mean()
    value = kd_loss(student, teacher, method="fkl", mask=mask)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fkl_equals_f_kl_div_with_its_reversed_argument_order() -> None:
    student, teacher, _ = random_kd_inputs(2)
    mask = torch.ones(student.shape[:2], dtype=torch.bool)
    expected = F.kl_div(
        F.log_softmax(student, -1).reshape(-1, 7),
        F.log_softmax(teacher, -1).reshape(-1, 7),
        log_target=True,
        reduction="batchmean",
    )
    assert kd_loss(student, teacher, method="fkl", mask=mask).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_identical_inputs_give_zero() -> None:
    student, _, mask = random_kd_inputs(3)
    assert kd_loss(student, student.clone(), method="fkl", mask=mask).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_temperature_scales_by_t_squared_on_the_softened_kl() -> None:
    student, teacher, mask = random_kd_inputs(4)
    t = 3.0
    softened = kd_loss(student / t, teacher / t, method="fkl", mask=mask, temperature=1.0)
    assert kd_loss(student, teacher, method="fkl", mask=mask, temperature=t).item() == (
        pytest.approx(t**2 * softened.item(), rel=1e-5)
    )


def test_masked_positions_do_not_count() -> None:
    student, teacher, mask = random_kd_inputs(5)
    changed = student.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    a = kd_loss(student, teacher, method="fkl", mask=mask)
    b = kd_loss(changed, teacher, method="fkl", mask=mask)
    assert torch.equal(a, b)


def test_all_masked_gives_zero_not_nan() -> None:
    student, teacher, mask = random_kd_inputs(6)
    student.requires_grad_(True)
    none = torch.zeros_like(mask)
    for reduction in ("mean", "sum"):
        value = kd_loss(student, teacher, method="fkl", mask=none, reduction=reduction)
        assert value.item() == 0.0
    value.backward()
    assert student.grad is not None and torch.all(student.grad == 0)
    labels = torch.full(mask.shape, -100)
    assert ce_loss(student, labels).item() == 0.0


def test_fkl_gradient_matches_finite_differences() -> None:
    student, teacher, mask = random_kd_inputs(7, shape=(1, 3, 4))
    student64 = student.double().requires_grad_(True)

    def function(x: torch.Tensor) -> torch.Tensor:
        return kd_loss(x, teacher.double(), method="fkl", mask=mask, temperature=2.0).double()

    # the loss computes in float32, so compare with tolerances to match
    assert torch.autograd.gradcheck(function, (student64,), eps=1e-3, atol=1e-3, rtol=1e-2)
    # analytic: dL/dz_s = T * (q - p) / n_tokens
    x = student.clone().requires_grad_(True)
    kd_loss(x, teacher, method="fkl", mask=mask, temperature=2.0).backward()
    expected = 2.0 * (F.softmax(student / 2, -1) - F.softmax(teacher / 2, -1)) / mask.sum()
    expected[~mask] = 0
    assert x.grad is not None
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_sum_over_micro_batches_equals_mean_over_the_whole_batch() -> None:
    student, teacher, mask = random_kd_inputs(8, shape=(4, 6, 9))
    labels = torch.randint(0, 9, mask.shape, generator=torch.Generator().manual_seed(0))
    labels[~mask] = -100
    whole = student.clone().requires_grad_(True)
    (kd_loss(whole, teacher, method="fkl", mask=mask) + ce_loss(whole, labels)).backward()

    parts = student.clone().requires_grad_(True)
    n_tokens = mask.sum()
    total = torch.zeros(())
    for rows in (slice(0, 1), slice(1, 4)):  # unequal micro-batches
        part = (
            kd_loss(parts[rows], teacher[rows], method="fkl", mask=mask[rows], reduction="sum")
            + ce_loss(parts[rows], labels[rows], reduction="sum")
        ) / n_tokens
        part.backward()
        total = total + part.detach()
    expected = kd_loss(student, teacher, method="fkl", mask=mask) + ce_loss(student, labels)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert whole.grad is not None and parts.grad is not None
    assert torch.allclose(whole.grad, parts.grad, atol=1e-7)


def test_ce_loss_matches_f_cross_entropy() -> None:
    student, _, mask = random_kd_inputs(9)
    labels = torch.randint(0, 7, mask.shape, generator=torch.Generator().manual_seed(1))
    labels[~mask] = -100
    expected = F.cross_entropy(student.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    assert ce_loss(student, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert ce_loss(student, labels, reduction="sum").item() == pytest.approx(
        expected.item() * int(mask.sum()), rel=1e-5
    )


def test_bf16_logits_are_computed_in_float32() -> None:
    student, teacher, mask = random_kd_inputs(10)
    value = kd_loss(student.bfloat16(), teacher.bfloat16(), method="fkl", mask=mask)
    assert value.dtype == torch.float32


def test_unknown_method_names_the_allowed_ones() -> None:
    student, teacher, mask = random_kd_inputs(11)
    with pytest.raises(ValueError, match="fkl"):
        kd_loss(student, teacher, method="nope", mask=mask)
    assert "fkl" in KD_METHODS
    with pytest.raises(ValueError):
        kd_loss(student, teacher, method="fkl", mask=mask, reduction="max")
