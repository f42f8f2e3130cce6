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


def test_gap_closed_is_unbounded_rather_than_narrowed_when_the_gap_can_vanish():
    """Half the features have the ceiling below the base: many resamples have no positive gap. The old
    interval dropped those resamples and clamped the rest around the estimate; now the open end is NaN."""
    from neuroscribe.eval.stats import gap_closed

    base = [0.0] * 10
    ceiling = [1.0, -0.9] * 5  # mean gap 0.05
    student = [0.05] * 10  # mean gain 0.05: estimate 1.0
    closed = gap_closed(student, base, ceiling, n_resamples=500)
    assert closed.estimate == pytest.approx(1.0)
    assert math.isnan(closed.high), "a vanishing gap leaves the upper end unbounded"
    firm = gap_closed([0.5] * 10, base, [1.0 + 0.01 * i for i in range(10)], n_resamples=500)
    assert firm.low <= firm.estimate <= firm.high and firm.high - firm.low < 0.05


def test_clustered_difference_widens_with_shared_cluster_effects_and_seed_noise():
    from neuroscribe.eval.stats import clustered_difference

    rng = np.random.default_rng(0)
    n_clusters, per = 8, 6
    offsets = rng.normal(0, 0.3, n_clusters)  # a family-wide effect: features of a family move together
    diff = np.concatenate([o + rng.normal(0, 0.02, per) for o in offsets])
    clusters = [f"family{i}" for i in range(n_clusters) for _ in range(per)]
    zeros = [0.0] * len(diff)
    naive = paired_difference(list(diff), zeros, n_resamples=1000)
    clustered = clustered_difference(list(diff), zeros, clusters, n_resamples=1000)
    assert clustered.estimate == pytest.approx(naive.estimate)
    assert clustered.width > 1.8 * naive.width, (clustered.width, naive.width)
    # singleton clusters and one seed: the ordinary paired bootstrap, up to resampling noise
    singles = clustered_difference(list(diff), zeros, [str(i) for i in range(len(diff))], n_resamples=1000)
    assert singles.width == pytest.approx(naive.width, rel=0.25)
    # three training seeds that disagree by a seed-wide shift: wider than one seed alone
    seeds = [list(diff + shift) for shift in (-0.2, 0.0, 0.2)]
    with_seeds = clustered_difference(seeds, [zeros] * 3, clusters, n_resamples=1000)
    assert with_seeds.width > clustered.width
    nan_one = list(diff)
    nan_one[0] = float("nan")
    assert clustered_difference(nan_one, zeros, clusters, n_resamples=50).n_missing == 1
    with pytest.raises(ValueError, match="cluster labels"):
        clustered_difference(list(diff), zeros, clusters[:-1])


def test_pooled_split_half_reliability_is_not_inflated_by_differences_between_rows():
    """Two explainer rows whose scores are pure noise within each row but sit at different levels: pooled
    raw, the level gap alone would give r near 1; centred per row, r stays near 0."""
    from neuroscribe.eval.results import Explainer, reliability

    rng = np.random.default_rng(1)
    rows = [Explainer("baseline_null", "null", "baseline", 1, "one"), Explainer("base_best_of_1", "b", "base", 1, "g")]
    features = []
    for _ in range(40):
        results = {}
        for level, ex in zip((0.0, 0.6), rows):
            a, b = level + rng.normal(0, 0.05), level + rng.normal(0, 0.05)
            results[ex.name] = {"scores": {"sim": {"selection_split_score": a, "score": b}}}
        features.append({"results": results})
    rel = reliability(features, rows, "sim", n_resamples=200)
    assert abs(rel["pooled"]["estimate"]) < 0.4, rel["pooled"]
    assert all(abs(r["estimate"]) < 0.5 for r in rel["by_explainer"].values())


def test_planted_families_and_real_layers_never_share_a_group():
    """The by-group table: planted family 6 (morphology) and MLP layer 6 are two rows, real units first."""
    from neuroscribe.eval.results import feature_groups, group_of

    feats = [
        {"kind": "planted", "layer": 6},
        {"kind": "mlp", "layer": 6},
        {"kind": "planted", "layer": 1},
        {"kind": "mlp", "layer": 20},
        {"kind": "planted", "layer": 99},
    ]
    assert [group_of(f) for f in feats] == ["planted: morphology", "mlp L6", "planted: word", "mlp L20", "planted L99"]
    assert feature_groups(feats) == ["mlp L6", "mlp L20", "planted: word", "planted: morphology", "planted L99"]
