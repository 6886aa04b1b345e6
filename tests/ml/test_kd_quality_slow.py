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
