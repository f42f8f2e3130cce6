"""Eval statistics on inputs whose answers are known: bootstrap intervals, paired differences, win rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuroscribe.eval.stats import bootstrap_ci, finite, paired_difference, win_rate


def test_constant_data_gives_a_zero_width_interval_at_the_constant():
    for statistic in ("mean", "median"):
        ci = bootstrap_ci([0.3] * 25, statistic)
        assert ci.estimate == ci.low == ci.high == pytest.approx(0.3)
        assert ci.width == 0 and ci.n == 25


def test_interval_covers_the_true_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.normal(0.4, 0.2, 30).tolist(), seed=3)
    large = bootstrap_ci(rng.normal(0.4, 0.2, 600).tolist(), seed=3)
    assert small.contains(0.4) and large.contains(0.4)
    assert large.width < small.width / 3  # ~ 1/sqrt(20)
    assert small.low < small.estimate < small.high


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(0).normal(size=40).tolist()
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci(values, seed=5) != bootstrap_ci(values, seed=6)


def test_median_is_robust_to_one_outlier_where_the_mean_is_not():
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 100.0]
    assert bootstrap_ci(values, "median").estimate == pytest.approx(0.35)
    assert bootstrap_ci(values, "mean").estimate == pytest.approx(np.mean(values))


def test_nan_and_none_are_left_out_and_counted():
    ci = bootstrap_ci([0.5, float("nan"), None, 0.5])
    assert (ci.n, ci.n_missing, ci.estimate) == (2, 2, 0.5)
    empty = bootstrap_ci([None, float("nan")])
    assert empty.n == 0 and math.isnan(empty.estimate) and math.isnan(empty.low)
    with pytest.raises(ValueError, match="infinite"):
        finite([1.0, float("inf")])
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci([1.0], "mode")
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.5)


def test_paired_difference_recovers_a_known_shift_and_excludes_zero():
    rng = np.random.default_rng(2)
    teacher = rng.uniform(-0.2, 0.8, 40)  # widely spread per feature ...
    student = teacher + 0.1 + rng.normal(0, 0.02, 40)  # ... but the pairs move together
    diff = paired_difference(student.tolist(), teacher.tolist())
    assert diff.contains(0.1) and diff.low > 0
    assert diff.width < 0.03
    # The unpaired intervals overlap: pairing is what makes the shift visible.
    assert bootstrap_ci(student.tolist()).low < bootstrap_ci(teacher.tolist()).high
    # Swapping sides flips the sign exactly.
    flipped = paired_difference(teacher.tolist(), student.tolist())
    assert flipped.estimate == pytest.approx(-diff.estimate)


def test_paired_difference_drops_incomplete_pairs_and_checks_lengths():
    diff = paired_difference([1.0, None, 3.0, 2.0], [0.5, 0.5, float("nan"), 1.0])
    assert (diff.n, diff.n_missing) == (2, 2) and diff.estimate == pytest.approx(0.75)
    with pytest.raises(ValueError, match="as many scores"):
        paired_difference([1.0], [1.0, 2.0])


def test_win_rate_counts_ties_as_half():
    a = [0.5, 0.6, 0.2, 0.3, 0.9]
    b = [0.4, 0.6, 0.3, 0.3 + 1e-12, None]
    wr = win_rate(a, b)
    assert (wr.wins, wr.ties, wr.losses) == (1, 2, 1)
    assert wr.rate.estimate == pytest.approx((1 + 0.5 * 2) / 4)
    assert wr.rate.n_missing == 1
    always = win_rate([1.0] * 10, [0.0] * 10)
    assert always.rate.estimate == always.rate.low == always.rate.high == 1.0
    strict = win_rate([0.3], [0.3 + 1e-6], tie_tolerance=0)
    assert (strict.wins, strict.ties, strict.losses) == (0, 0, 1)
