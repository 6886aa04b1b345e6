"""Method names and parameters are checked, with errors that name what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ml.distillation.losses import KD_METHODS, KD_PARAMS, kd_loss, validate_loss_params
from ml.distillation.recipe_config import RecipeConfig


def _inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 5, generator=generator)
    teacher = torch.randn(2, 3, 5, generator=generator)
    return student, teacher, torch.ones(2, 3, dtype=torch.bool)


def test_methods_and_their_parameters() -> None:
    assert KD_METHODS == ("fkl", "rkl", "jsd", "tvd", "skl", "srkl", "akl", "atkd", "taid")
    defaults = {m: {k: spec.default for k, spec in specs.items()} for m, specs in KD_PARAMS.items()}
    assert defaults == {
        "fkl": {},
        "rkl": {},
        "tvd": {},
        "jsd": {"beta": 0.5},
        "skl": {"alpha": 0.1},
        "srkl": {"alpha": 0.1},
        "akl": {"mu": 0.5},
        "atkd": {"k": 50, "ratio": 0.5, "lam": 0.2},
        "taid": {"t": None},
    }


def test_unknown_method_names_the_allowed_ones() -> None:
    student, teacher, mask = _inputs()
    with pytest.raises(ValueError, match="allowed: fkl, rkl, jsd, tvd, skl, srkl, akl, atkd, taid"):
        kd_loss(student, teacher, method="kl", mask=mask)


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("fkl", {"beta": 0.5}, "unknown parameter 'beta' for KD method 'fkl'; allowed: none"),
        ("jsd", {"alpha": 0.5}, "unknown parameter 'alpha'.*allowed: beta"),
        ("atkd", {"mu": 0.5}, "allowed: k, lam, ratio"),
        ("jsd", {"beta": 1.5}, "'beta' must be a number in \\[0.0, 1.0\\]"),
        ("jsd", {"beta": float("nan")}, "'beta'"),
        ("skl", {"alpha": -0.1}, "'alpha'"),
        ("srkl", {"alpha": True}, "'alpha'"),
        ("akl", {"mu": "0.5"}, "'mu'"),
        ("atkd", {"k": 0}, "'k' must be an integer"),
        ("atkd", {"k": 2.5}, "'k' must be an integer"),
        ("atkd", {"ratio": 0.0}, "'ratio' must be a number in \\(0.0, 1.0\\]"),
        ("atkd", {"lam": 1.01}, "'lam'"),
        ("taid", {}, "needs parameter 't'"),
        ("taid", {"t": 1.2}, "'t'"),
    ],
)
def test_bad_parameters_are_rejected(method: str, params: dict[str, Any], message: str) -> None:
    student, teacher, mask = _inputs()
    with pytest.raises(ValueError, match=message):
        kd_loss(student, teacher, method=method, mask=mask, **params)


def test_k_is_capped_at_the_vocabulary() -> None:
    student, teacher, mask = _inputs()
    a = kd_loss(student, teacher, method="atkd", mask=mask, k=5)
    b = kd_loss(student, teacher, method="atkd", mask=mask, k=500.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ce", {}),
        ("fkl", {}),
        ("jsd", {"beta": 0.1}),
        ("atkd", {"k": 10, "ratio": 0.5, "lam": 0.2}),
        ("taid", {}),
        ("taid", {"t_start": 0.2, "t_end": 0.9, "alpha": 1e-3, "beta": 0.9}),
    ],
)
def test_valid_job_spec_parameters_pass(method: str, params: dict[str, float]) -> None:
    validate_loss_params(method, params)


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("ce", {"beta": 0.5}, "'ce' takes no parameters"),
        ("mystery", {}, "allowed: ce, fkl"),
        ("jsd", {"temperature": 2.0}, "'temperature'.*allowed: beta"),
        ("taid", {"t": 0.5}, "unknown parameter 't'.*allowed: alpha, beta, t_end, t_start"),
        ("taid", {"t_start": 0.9, "t_end": 0.5}, "'t_end'"),
        ("taid", {"beta": 1.0}, "'beta'"),
        ("taid", {"alpha": "fast"}, "'alpha'"),
        ("skl", {"alpha": 2}, "'alpha'"),
    ],
)
def test_bad_job_spec_parameters_name_the_key(
    method: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validate_loss_params(method, params)


def test_recipe_config_checks_loss_params(make_config: Callable[..., RecipeConfig]) -> None:
    make_config(loss="jsd", loss_params={"beta": 0.3}).validate()
    with pytest.raises(ValueError, match="'beta'"):
        make_config(loss="jsd", loss_params={"beta": 3.0}).validate()
    with pytest.raises(ValueError, match="kd_chunk_tokens"):
        make_config(kd_chunk_tokens=-1).validate()
    a = make_config(loss="jsd", loss_params={"beta": 0.3})
    b = make_config(loss="jsd", loss_params={"beta": 0.4})
    c = make_config(loss="jsd", loss_params={"beta": 0.3}, kd_chunk_tokens=64)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == c.fingerprint()  # chunking changes memory, not the trajectory


def test_a_config_with_no_tokenizer_source_is_refused(make_config) -> None:
    config = make_config(loss="ce", teacher_path=None, student_init={"config": {"hidden_size": 32}})
    with pytest.raises(ValueError, match="a tokenizer comes from"):
        config.validate()
