"""Properties the maths promises: zeros, limits, symmetries, masking, accumulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml.distillation.divergences import atkd_parts
from ml.distillation.losses import KD_METHODS, kd_loss
from tests.ml.kd_reference import random_kd_inputs

PARAMS: dict[str, dict[str, float]] = {"taid": {"t": 0.6}, "atkd": {"k": 3}}


def _loss(method: str, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
          **kwargs: float | str) -> torch.Tensor:  # fmt: skip
    params = dict(PARAMS.get(method, {}))
    params.update(kwargs)  # type: ignore[arg-type]
    return kd_loss(student, teacher, method=method, mask=mask, **params)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", KD_METHODS)
def test_identical_inputs_give_zero_loss_and_gradient(method: str) -> None:
    student, _, mask = random_kd_inputs(0)
    x = student.clone().requires_grad_(True)
    value = _loss(method, x, student.clone(), mask, temperature=1.7)
    (grad,) = torch.autograd.grad(value, x)
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)


@pytest.mark.parametrize("method", KD_METHODS)
def test_all_masked_gives_zero_and_finite_gradients(method: str) -> None:
    student, teacher, mask = random_kd_inputs(1)
    none = torch.zeros_like(mask)
    for reduction in ("mean", "sum"):
        x = student.clone().requires_grad_(True)
        value = _loss(method, x, teacher, none, reduction=reduction)
        (grad,) = torch.autograd.grad(value, x)
        assert value.item() == 0.0 and not torch.isnan(value)
        assert torch.all(grad == 0)


@pytest.mark.parametrize("method", KD_METHODS)
def test_masked_positions_do_not_count(method: str) -> None:
    student, teacher, mask = random_kd_inputs(2)
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[~mask] = torch.randn_like(changed_s[~mask]) * 10
    changed_t[~mask] = torch.randn_like(changed_t[~mask]) * 10
    a = _loss(method, student, teacher, mask)
    b = _loss(method, changed_s, changed_t, mask)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("method", KD_METHODS)
def test_micro_batch_sums_over_total_tokens_equal_the_big_batch_mean(method: str) -> None:
    # atkd ranks its hard tokens within a call; with ratio = 1 every token is hard.
    extra = {"ratio": 1.0} if method == "atkd" else {}
    student, teacher, mask = random_kd_inputs(3, shape=(4, 6, 9))
    whole = student.clone().requires_grad_(True)
    _loss(method, whole, teacher, mask, **extra).backward()
    parts = student.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 1), slice(1, 4)):  # unequal micro-batches
        part = _loss(method, parts[rows], teacher[rows], mask[rows], reduction="sum", **extra)
        (part / mask.sum()).backward()
        total += part.item() / int(mask.sum())
    assert total == pytest.approx(_loss(method, student, teacher, mask, **extra).item(), rel=1e-5)
    assert whole.grad is not None and parts.grad is not None
    assert torch.allclose(whole.grad, parts.grad, atol=1e-7)


def test_jsd_endpoints_are_forward_and_reverse_kl_as_in_trl() -> None:
    student, teacher, mask = random_kd_inputs(4)
    for temperature in (1.0, 2.5):
        fkl = _loss("fkl", student, teacher, mask, temperature=temperature)
        rkl = _loss("rkl", student, teacher, mask, temperature=temperature)
        jsd0 = _loss("jsd", student, teacher, mask, beta=0.0, temperature=temperature)
        jsd1 = _loss("jsd", student, teacher, mask, beta=1.0, temperature=temperature)
        assert torch.equal(jsd0, fkl) and torch.equal(jsd1, rkl)
    # Just inside the endpoints the formula itself is near 0 (TRL's special case is a jump).
    assert _loss("jsd", student, teacher, mask, beta=1e-6).item() < 1e-4


def test_fkl_and_rkl_equal_f_kl_div_with_reversed_arguments() -> None:
    student, teacher, _ = random_kd_inputs(5)
    mask = torch.ones(student.shape[:2], dtype=torch.bool)
    log_q = F.log_softmax(student, -1).reshape(-1, 7)
    log_p = F.log_softmax(teacher, -1).reshape(-1, 7)
    fkl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    rkl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    assert _loss("fkl", student, teacher, mask).item() == pytest.approx(fkl.item(), rel=1e-5)
    assert _loss("rkl", student, teacher, mask).item() == pytest.approx(rkl.item(), rel=1e-5)


@pytest.mark.parametrize(("method", "params"), [("jsd", {"beta": 0.5}), ("tvd", {})])
def test_symmetric_methods_are_symmetric(method: str, params: dict[str, float]) -> None:
    student, teacher, mask = random_kd_inputs(6)
    a = _loss(method, student, teacher, mask, **params)
    b = _loss(method, teacher, student, mask, **params)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    # and the asymmetric ones are not
    assert _loss("jsd", student, teacher, mask, beta=0.2).item() != pytest.approx(
        _loss("jsd", teacher, student, mask, beta=0.2).item(), rel=1e-3
    )


def test_skew_limits() -> None:
    student, teacher, mask = random_kd_inputs(7)
    fkl = _loss("fkl", student, teacher, mask, temperature=2.0)
    rkl = _loss("rkl", student, teacher, mask, temperature=2.0)
    skl0 = _loss("skl", student, teacher, mask, alpha=0.0, temperature=2.0)
    srkl0 = _loss("srkl", student, teacher, mask, alpha=0.0, temperature=2.0)
    assert skl0.item() == pytest.approx(fkl.item(), rel=1e-6)
    assert srkl0.item() == pytest.approx(rkl.item(), rel=1e-6)
    assert _loss("skl", student, teacher, mask, alpha=1.0).item() == 0.0
    # skewing bounds the divergence: KL(p || a p + (1 - a) q) <= -log(a)
    assert (
        _loss("skl", student, teacher, mask, alpha=0.1).item()
        <= -torch.log(torch.tensor(0.1)).item()
    )


def test_taid_endpoints() -> None:
    student, teacher, mask = random_kd_inputs(8)
    fkl = _loss("fkl", student, teacher, mask, temperature=1.5)
    assert _loss("taid", student, teacher, mask, t=1.0, temperature=1.5).item() == pytest.approx(
        fkl.item(), rel=1e-6
    )
    x = student.clone().requires_grad_(True)
    value = _loss("taid", x, teacher, mask, t=0.0)
    (grad,) = torch.autograd.grad(value, x)
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-7)


def test_akl_is_a_convex_mix_of_fkl_and_rkl() -> None:
    student, teacher, mask = random_kd_inputs(9)
    ones = torch.ones_like(mask)
    for b in range(2):
        for s in range(5):
            one = torch.zeros_like(mask)
            one[b, s] = True
            akl = _loss("akl", student, teacher, one).item()
            fkl = _loss("fkl", student, teacher, one).item()
            rkl = _loss("rkl", student, teacher, one).item()
            assert min(fkl, rkl) - 1e-6 <= akl <= max(fkl, rkl) + 1e-6
    assert _loss("akl", student, teacher, ones).item() > 0


def test_atkd_parts_decompose_the_forward_kl() -> None:
    student, teacher, _ = random_kd_inputs(10)
    log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    fkl = (log_p.exp() * (log_p - log_q)).sum(-1)
    for k in (1, 3, 6):
        tkd, dkd, u = atkd_parts(log_q, log_p, k=k)
        top = log_p.exp().topk(k, dim=-1).values.sum(-1)
        assert torch.allclose(u, 1 - top, atol=1e-6)
        assert torch.allclose(tkd + u * dkd, fkl, atol=1e-5)
        assert torch.all(dkd >= -1e-6) and torch.all(tkd >= -1e-6)


def test_atkd_selects_the_most_uncertain_tokens() -> None:
    student, teacher, mask = random_kd_inputs(11)
    # lam = 1: hard tokens contribute nothing; lam = 0: easy tokens contribute nothing.
    only_easy = _loss("atkd", student, teacher, mask, lam=1.0)
    only_hard = _loss("atkd", student, teacher, mask, lam=0.0)
    assert only_easy.item() > 0 and only_hard.item() > 0
    mixed = _loss("atkd", student, teacher, mask, lam=0.3)
    assert mixed.item() == pytest.approx(0.3 * only_easy.item() + 0.7 * only_hard.item(), rel=1e-5)


@pytest.mark.parametrize("method", KD_METHODS)
def test_bf16_logits_are_computed_in_float32(method: str) -> None:
    student, teacher, mask = random_kd_inputs(12)
    value = _loss(method, student.bfloat16(), teacher.bfloat16(), mask)
    assert value.dtype == torch.float32 and torch.isfinite(value)
