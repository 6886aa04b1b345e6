"""ROME's and MEMIT's closed forms against independent solves of the problems they solve."""

from __future__ import annotations

import torch

from ml.editing.rome import memit_update, rome_update


def _stored_memory(seed: int, d_in: int = 6, d_out: int = 4, n: int = 40):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(d_in, n, generator=generator, dtype=torch.float64)
    values = torch.randn(d_out, n, generator=generator, dtype=torch.float64)
    # W is the least-squares memory of (K, V): min ||W K - V||
    weight = torch.linalg.lstsq(keys.t(), values.t()).solution.t()
    return keys, values, weight, generator


def test_rome_update_solves_the_equality_constrained_least_squares() -> None:
    keys, values, weight, generator = _stored_memory(0)
    d_out, d_in = weight.shape
    key = torch.randn(d_in, generator=generator, dtype=torch.float64)
    value = torch.randn(d_out, generator=generator, dtype=torch.float64)
    update = rome_update(weight, keys @ keys.t(), key, value)
    # Independent: for each output row w, min ||K^T w - v_row||^2 s.t. key . w = value_row, by
    # its KKT system [[2 K K^T, key], [key^T, 0]] [w; mu] = [2 K v_row; value_row].
    kkt = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
    kkt[:d_in, :d_in] = 2 * keys @ keys.t()
    kkt[:d_in, d_in] = key
    kkt[d_in, :d_in] = key
    rhs = torch.cat([2 * keys @ values.t(), value[None]], dim=0)  # (d_in + 1, d_out)
    constrained = torch.linalg.solve(kkt, rhs)[:d_in].t()
    torch.testing.assert_close(weight + update, constrained, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close((weight + update) @ key, value, rtol=1e-9, atol=1e-9)
    assert torch.linalg.matrix_rank(update) == 1


def test_memit_update_matches_the_stacked_normal_equations() -> None:
    keys0, _, weight, generator = _stored_memory(1)
    d_out, d_in = weight.shape
    new_keys = torch.randn(d_in, 3, generator=generator, dtype=torch.float64)
    residuals = torch.randn(d_out, 3, generator=generator, dtype=torch.float64)
    lam = 0.7
    covariance = keys0 @ keys0.t() / keys0.shape[1]
    update = memit_update(residuals, new_keys, covariance, lam)
    # Independent: min_Δ λ ||Δ K0||² / n + ||Δ K1 - R||² as one least-squares problem on the
    # stacked keys [sqrt(λ/n) K0, K1] with targets [0, R].
    scale = (lam / keys0.shape[1]) ** 0.5
    stacked_keys = torch.cat([scale * keys0, new_keys], dim=1)
    stacked_targets = torch.cat(
        [torch.zeros(d_out, keys0.shape[1], dtype=torch.float64), residuals], 1
    )
    direct = torch.linalg.lstsq(stacked_keys.t(), stacked_targets.t()).solution.t()
    torch.testing.assert_close(update, direct, rtol=1e-8, atol=1e-10)


def test_memit_without_prior_weight_reaches_every_residual() -> None:
    _, _, weight, generator = _stored_memory(2)
    d_out, d_in = weight.shape
    new_keys = torch.randn(d_in, 2, generator=generator, dtype=torch.float64)
    residuals = torch.randn(d_out, 2, generator=generator, dtype=torch.float64)
    covariance = torch.eye(d_in, dtype=torch.float64)
    update = memit_update(residuals, new_keys, covariance, 1e-9)
    torch.testing.assert_close(update @ new_keys, residuals, rtol=1e-6, atol=1e-6)
