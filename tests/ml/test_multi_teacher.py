from __future__ import annotations

import pytest
import torch

from ml.distillation.multi_teacher import mix_teacher_logits, route_teacher_logits


def test_mixture_is_the_weighted_average_of_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    for temperature in (1.0, 2.5):
        mixed = mix_teacher_logits([a, b], [3.0, 1.0], temperature)
        expected = 0.75 * torch.softmax(a / temperature, -1) + 0.25 * torch.softmax(
            b / temperature, -1
        )
        assert torch.allclose(torch.softmax(mixed / temperature, -1), expected, atol=1e-6)


def test_single_teacher_mixture_is_that_teacher() -> None:
    a = torch.randn(1, 4, 5)
    got = torch.softmax(mix_teacher_logits([a], [1.0], 1.0), -1)
    assert torch.allclose(got, torch.softmax(a, -1), atol=1e-6)


def test_routing_picks_each_examples_teacher() -> None:
    teachers = [torch.full((3, 2, 4), float(i)) for i in range(3)]
    routed = route_teacher_logits(teachers, torch.tensor([2, 0, 1]))
    assert routed[:, 0, 0].tolist() == [2.0, 0.0, 1.0]


def test_bad_weights_and_routes_are_refused() -> None:
    a = torch.randn(2, 1, 3)
    with pytest.raises(ValueError):
        mix_teacher_logits([a, a], [1.0], 1.0)
    with pytest.raises(ValueError):
        mix_teacher_logits([a, a], [0.0, 0.0], 1.0)
    with pytest.raises(ValueError):
        route_teacher_logits([a], torch.tensor([0, 1]))
