"""A shrunken bench/kd_quality.py run: ce against fkl, one seed, a smaller teacher.

The full table (8 methods x 3 seeds) is in docs/BENCHMARKS.md; this keeps its machinery and its
headline honest: distillation must not lose to plain fine-tuning, and both must learn.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.kd_quality import BenchSettings, load_data, run_bench

# fkl and ce are level in the full benchmark (seed 0: fkl 0.758, ce 0.772 EM); one seed of a
# shorter run is noisy, so fkl may trail ce by this much before the test calls it a regression.
EM_TOLERANCE = 0.03


@pytest.mark.slow
def test_fkl_is_not_worse_than_fine_tuning_and_both_learn(tmp_path: Path) -> None:
    # ~2 min on two idle cores: a 600-step teacher (the demo's) and two 300-step students.
    settings = BenchSettings(teacher_steps=600, steps=300)
    data = load_data(settings)
    assert not {p for p, _ in data.held_out} & {p for p, _ in data.train}

    results = run_bench(settings, methods=("ce", "fkl"), seeds=(0,), cache_dir=tmp_path)

    summary = results["summary"]
    untrained = summary["untrained student"]["exact_match"]["mean"]
    ce = summary["ce"]["exact_match"]["mean"]
    fkl = summary["fkl"]["exact_match"]["mean"]
    assert results["teacher"]["held_out"]["exact_match"] > 0.6
    assert ce > untrained + 0.2 and fkl > untrained + 0.2
    assert fkl >= ce - EM_TOLERANCE, (fkl, ce)


# The fifth design (docs/BENCHMARKS.md): with 20 % wrong training responses, fkl beat ce by
# 0.17 EM over 3 seeds. The shrunken run must keep a clear margin, so that a regression in
# the loss, the recipe or the bench's noise shows.
NOISY_MARGIN = 0.05


@pytest.mark.slow
def test_fkl_beats_fine_tuning_on_noisy_responses(tmp_path: Path) -> None:
    # ~3 min on two idle cores: a 600-step teacher, a 400-step ce warm start, 200 steps each.
    settings = BenchSettings(
        teacher_steps=600, label_noise=0.2, warm_start_steps=400, steps=200, lr=3e-4
    )
    data = load_data(settings)
    clean = load_data(BenchSettings(teacher_steps=600))
    assert data.held_out == clean.held_out  # the references scored against stay correct
    wrong = sum(a != b for a, b in zip(data.train, clean.train, strict=True))
    assert 0.15 < wrong / len(data.train) < 0.25

    results = run_bench(settings, methods=("ce", "fkl"), seeds=(0,), cache_dir=tmp_path)

    summary = results["summary"]
    ce = summary["ce"]["exact_match"]["mean"]
    fkl = summary["fkl"]["exact_match"]["mean"]
    assert fkl > ce + NOISY_MARGIN, (fkl, ce)
