"""Every KD method against an independent float64 per-token loop: values and gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ml.distillation.losses import KD_METHODS, kd_loss
from tests.ml.kd_reference import random_kd_inputs, reference_loss

# (method, params): defaults and one non-default setting per parameterised method.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {}),
    ("jsd", {"beta": 0.9}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("tvd", {}),
    ("skl", {}),
    ("skl", {"alpha": 0.4}),
    ("srkl", {}),
    ("srkl", {"alpha": 0.7}),
    ("akl", {}),
    ("akl", {"mu": 0.8}),
    ("atkd", {"k": 3}),
    ("atkd", {"k": 2, "ratio": 0.25, "lam": 0.6}),
    ("atkd", {}),  # k = 50 > vocab: the target set is the whole vocabulary
    ("taid", {"t": 0.4}),
    ("taid", {"t": 0.85}),
]


def _ids(case: tuple[str, dict[str, Any]]) -> str:
    method, params = case
    return method + "".join(f"-{k}={v}" for k, v in params.items())


def test_every_method_has_a_case() -> None:
    assert {method for method, _ in CASES} == set(KD_METHODS)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_value_matches_the_per_token_loop(
    case: tuple[str, dict[str, Any]], temperature: float
) -> None:
    method, params = case
    student, teacher, mask = random_kd_inputs(0)
    for reduction in ("mean", "sum"):
        value = kd_loss(
            student,
            teacher,
            method=method,
            mask=mask,
            temperature=temperature,
            reduction=reduction,
            **params,
        )
        expected = reference_loss(
            student,
            teacher,
            mask,
            method=method,
            temperature=temperature,
            reduction=reduction,
            **params,
        )
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(expected.item(), rel=2e-5, abs=1e-6), reduction


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradient_matches_the_per_token_loop(case: tuple[str, dict[str, Any]]) -> None:
    method, params = case
    student, teacher, mask = random_kd_inputs(1, shape=(2, 3, 6))
    x = student.clone().requires_grad_(True)
    value = kd_loss(x, teacher, method=method, mask=mask, temperature=1.5, **params)
    (grad,) = torch.autograd.grad(value, x)
    x64 = student.double().requires_grad_(True)
    expected_value = reference_loss(x64, teacher, mask, method=method, temperature=1.5, **params)
    (expected,) = torch.autograd.grad(expected_value, x64)
    assert torch.allclose(grad.double(), expected, rtol=1e-4, atol=2e-6)
    assert torch.all(grad[~mask] == 0)


def test_kl_methods_match_torch_distributions() -> None:
    student, teacher, mask = random_kd_inputs(2)
    p = torch.distributions.Categorical(logits=teacher.double() / 2)
    q = torch.distributions.Categorical(logits=student.double() / 2)
    kl = torch.distributions.kl_divergence

    def ours(method: str, **params: float) -> float:
        return kd_loss(student, teacher, method=method, mask=mask, temperature=2.0, **params).item()

    assert ours("fkl") == pytest.approx(4 * kl(p, q)[mask].mean().item(), rel=1e-5)
    assert ours("rkl") == pytest.approx(4 * kl(q, p)[mask].mean().item(), rel=1e-5)
    m = torch.distributions.Categorical(probs=0.3 * p.probs + 0.7 * q.probs)
    skew = kl(p, m)[mask].mean().item()
    assert ours("skl", alpha=0.3) == pytest.approx(4 * skew, rel=1e-5)
    m = torch.distributions.Categorical(probs=0.3 * q.probs + 0.7 * p.probs)
    skew_reverse = kl(q, m)[mask].mean().item()
    assert ours("srkl", alpha=0.3) == pytest.approx(4 * skew_reverse, rel=1e-5)
    m = torch.distributions.Categorical(probs=0.6 * p.probs + 0.4 * q.probs)
    generalized = (0.6 * kl(p, m) + 0.4 * kl(q, m))[mask].mean().item()
    assert ours("jsd", beta=0.6) == pytest.approx(4 * generalized, rel=1e-5)
    r = torch.distributions.Categorical(logits=0.3 * student.double() / 2 + 0.7 * p.logits)
    assert ours("taid", t=0.7) == pytest.approx(4 * kl(r, q)[mask].mean().item(), rel=1e-5)


def test_small_value_by_hand() -> None:
    # One token, vocabulary 2: p = (0.5, 0.5), q = (0.8, 0.2) from logits (log 4, 0).
    student = torch.tensor([[[torch.log(torch.tensor(4.0)).item(), 0.0]]])
    teacher = torch.zeros(1, 1, 2)
    mask = torch.ones(1, 1, dtype=torch.bool)

    def ours(method: str, **params: float) -> float:
        return kd_loss(student, teacher, method=method, mask=mask, **params).item()

    assert ours("tvd") == pytest.approx(0.3, rel=1e-6)
    fkl = 0.5 * torch.log(torch.tensor(0.5 / 0.8)) + 0.5 * torch.log(torch.tensor(0.5 / 0.2))
    assert ours("fkl") == pytest.approx(fkl.item(), rel=1e-6)
    rkl = 0.8 * torch.log(torch.tensor(0.8 / 0.5)) + 0.2 * torch.log(torch.tensor(0.2 / 0.5))
    assert ours("rkl") == pytest.approx(rkl.item(), rel=1e-6)
    # skl alpha=0.5: m = (0.65, 0.35)
    skl = 0.5 * torch.log(torch.tensor(0.5 / 0.65)) + 0.5 * torch.log(torch.tensor(0.5 / 0.35))
    assert ours("skl", alpha=0.5) == pytest.approx(skl.item(), rel=1e-6)
    # akl, mu=0.5: ties in p; the top-1 token is the head, gaps are 0.3 and 0.3 -> 0.5 / 0.5
    assert ours("akl") == pytest.approx(0.5 * fkl.item() + 0.5 * rkl.item(), rel=1e-6)
