from __future__ import annotations

import math

import pytest
import torch

from ml.crossvocab.uld import kth_positions, uld_loss


def _reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_mask: torch.Tensor,
    teacher_mask: torch.Tensor,
    temperature: float,
) -> tuple[float, int]:
    """Sum over pairs and the pair count: a per-pair sort-and-subtract loop in float64."""
    total, pairs = 0.0, 0
    for row in range(student_logits.shape[0]):
        s_positions = [i for i, keep in enumerate(student_mask[row].tolist()) if keep]
        t_positions = [j for j, keep in enumerate(teacher_mask[row].tolist()) if keep]
        for i, j in zip(s_positions, t_positions, strict=False):
            q = torch.softmax(student_logits[row, i].double() / temperature, dim=-1).tolist()
            p = torch.softmax(teacher_logits[row, j].double() / temperature, dim=-1).tolist()
            q, p = sorted(q, reverse=True), sorted(p, reverse=True)
            width = max(len(q), len(p))
            q, p = q + [0.0] * (width - len(q)), p + [0.0] * (width - len(p))
            total += temperature**2 * sum(abs(a - b) for a, b in zip(q, p, strict=True))
            pairs += 1
    return total, pairs


@pytest.mark.parametrize(("vocab_s", "vocab_t"), [(7, 11), (11, 7), (9, 9)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_a_per_pair_loop(vocab_s: int, vocab_t: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(vocab_s * 100 + vocab_t)
    student = torch.randn(3, 6, vocab_s, generator=generator) * 2
    teacher = torch.randn(3, 8, vocab_t, generator=generator) * 2
    student_mask = torch.rand(3, 6, generator=generator) > 0.3
    teacher_mask = torch.rand(3, 8, generator=generator) > 0.4
    total, pairs = _reference(student, teacher, student_mask, teacher_mask, temperature)
    assert pairs > 0
    summed = uld_loss(
        student, teacher, student_mask, teacher_mask, temperature=temperature, reduction="sum"
    )
    mean = uld_loss(student, teacher, student_mask, teacher_mask, temperature=temperature)
    assert summed.item() == pytest.approx(total, rel=1e-5)
    assert mean.item() == pytest.approx(total / pairs, rel=1e-5)


def test_a_value_by_hand() -> None:
    student = torch.tensor([0.75, 0.25]).log().reshape(1, 1, 2)
    teacher = torch.tensor([0.2, 0.5, 0.3]).log().reshape(1, 1, 3)
    mask = torch.ones(1, 1, dtype=torch.bool)
    # sorted: (0.75, 0.25, 0) vs (0.5, 0.3, 0.2) -> 0.25 + 0.05 + 0.2
    assert uld_loss(student, teacher, mask, mask).item() == pytest.approx(0.5, abs=1e-6)


def test_identical_or_permuted_distributions_give_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 13, generator=generator)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert uld_loss(logits, logits.clone(), mask, mask).item() == pytest.approx(0.0, abs=1e-6)
    permuted = logits[..., torch.randperm(13, generator=generator)]
    assert uld_loss(logits, permuted, mask, mask).item() == pytest.approx(0.0, abs=1e-6)
    # Extra teacher tokens with probability 0 are exactly the zero padding.
    padded = torch.cat([logits, torch.full((2, 5, 4), -math.inf)], dim=-1)
    assert uld_loss(logits, padded, mask, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_pairs_the_kth_response_positions_of_each_side() -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(1, 5, 6, generator=generator)
    teacher = torch.randn(1, 4, 8, generator=generator)
    student_mask = torch.tensor([[False, True, False, True, True]])
    teacher_mask = torch.tensor([[True, False, True, False]])
    only = torch.tensor([[True]])
    expected = sum(
        uld_loss(student[:, [i]], teacher[:, [j]], only, only).item() for i, j in [(1, 0), (3, 2)]
    )
    got = uld_loss(student, teacher, student_mask, teacher_mask, reduction="sum")
    assert got.item() == pytest.approx(expected, rel=1e-6)
    index, valid = kth_positions(student_mask)
    assert index.tolist() == [[1, 3, 4]] and valid.tolist() == [[True, True, True]]


def test_all_masked_gives_zero_and_a_zero_gradient() -> None:
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 4, 7)
    loss = uld_loss(
        student, teacher, torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    )
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))


def test_gradients_match_finite_differences_and_skip_unpaired_positions() -> None:
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 6, generator=generator, dtype=torch.float64)
    student_mask = torch.tensor([[True, True, True, True], [False, True, False, True]])
    teacher_mask = torch.tensor([[True, False, True], [True, True, True]])

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return uld_loss(x, teacher, student_mask, teacher_mask, temperature=1.5)

    assert torch.autograd.gradcheck(loss_of, (student,))
    loss_of(student).backward()
    assert student.grad is not None
    # Row 0 pairs student positions 0 and 1 (the teacher has two response positions).
    assert student.grad[0, 2:].abs().sum().item() == 0.0
    assert student.grad[0, :2].abs().sum().item() > 0.0
    assert student.grad[1, [0, 2]].abs().sum().item() == 0.0


def test_micro_batch_sums_add_up_to_the_big_batch() -> None:
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(4, 5, 6, generator=generator)
    teacher = torch.randn(4, 7, 9, generator=generator)
    student_mask = torch.rand(4, 5, generator=generator) > 0.3
    teacher_mask = torch.rand(4, 7, generator=generator) > 0.3
    whole = uld_loss(student, teacher, student_mask, teacher_mask, reduction="sum")
    parts = sum(
        uld_loss(student[s], teacher[s], student_mask[s], teacher_mask[s], reduction="sum")
        for s in (slice(0, 1), slice(1, 4))
    )
    assert float(parts) == pytest.approx(whole.item(), rel=1e-6)


def test_rejects_bad_arguments() -> None:
    logits, mask = torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="reduction"):
        uld_loss(logits, logits, mask, mask, reduction="none")
    with pytest.raises(ValueError, match="temperature"):
        uld_loss(logits, logits, mask, mask, temperature=0.0)
    with pytest.raises(ValueError, match="teacher mask"):
        uld_loss(logits, logits, mask, mask[:, :1])
