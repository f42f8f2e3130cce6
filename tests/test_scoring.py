"""Pure scoring functions against hand-computed values."""

from __future__ import annotations

import math

import pytest

from neuroscribe import scoring


def test_pearson_hand_computed():
    # dx = dy-permuted (-1.5, -0.5, 0.5, 1.5): sum dx*dy = 4, sxx = syy = 5 -> r = 0.8
    assert scoring.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8, abs=1e-12)
    assert scoring.pearson([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0, abs=1e-12)
    assert scoring.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0, abs=1e-12)


def test_pearson_is_invariant_to_affine_rescaling():
    x, y = [0.5, -1.0, 2.0, 0.0, 3.5], [1, 4, 2, 8, 5]
    assert scoring.pearson(x, [3 * v + 2 for v in y]) == pytest.approx(scoring.pearson(x, y), abs=1e-12)


@pytest.mark.parametrize("x, y", [([], []), ([1.0], [2.0]), ([2, 2, 2], [1, 2, 3]), ([1, 2, 3], [0.1] * 3)])
def test_pearson_is_nan_when_undefined(x, y):
    assert math.isnan(scoring.pearson(x, y))


def test_pearson_constant_floats_with_inexact_mean_are_nan():
    # The mean of ten 0.1s is not exactly 0.1; a naive variance would be tiny but non-zero.
    assert math.isnan(scoring.pearson([0.1] * 10, list(range(10))))


def test_pearson_rejects_bad_input():
    with pytest.raises(ValueError, match="lengths differ"):
        scoring.pearson([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        scoring.pearson([1, float("nan"), 3], [1, 2, 3])


def test_pooled_correlation_pools_tokens_rather_than_averaging_records():
    true = [[0.0, 1.0], [10.0, 11.0]]
    pred = [[0.0, 1.0], [0.5, 0.5]]
    # Pooled: dt = (-5.5, -4.5, 4.5, 5.5), dp = (-.5, .5, 0, 0): sum = 0.5, stt = 101, spp = 0.5
    assert scoring.pooled_correlation(true, pred) == pytest.approx(0.5 / math.sqrt(50.5), abs=1e-12)
    assert math.isnan(scoring.pearson(true[1], pred[1]))  # per-record r would be undefined here


def test_pooled_correlation_checks_record_shapes():
    with pytest.raises(ValueError, match="record 1"):
        scoring.pooled_correlation([[1, 2], [3]], [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="2 true records vs 1"):
        scoring.pooled_correlation([[1], [2]], [[1]])


def test_balanced_indices_are_evenly_spaced():
    assert scoring.balanced_indices(5, 2) == [0, 2]
    assert scoring.balanced_indices(6, 3) == [0, 2, 4]
    assert scoring.balanced_indices(3, 5) == [0, 1, 2]


def test_top_and_random_mixes_one_to_one():
    top_true = [[9, 0], [8, 1], [7, 0], [6, 2]]
    top_pred = [[8, 1], [0, 9], [6, 0], [9, 9]]
    rnd_true = [[0, 1], [1, 0]]
    rnd_pred = [[1, 0], [0, 2]]
    # Two random records -> two top records, at indices 0 and 2 of the top side.
    expected = scoring.pooled_correlation([top_true[0], top_true[2]] + rnd_true, [top_pred[0], top_pred[2]] + rnd_pred)
    got = scoring.top_and_random_score(top_true, top_pred, rnd_true, rnd_pred)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got != pytest.approx(scoring.pooled_correlation(top_true + rnd_true, top_pred + rnd_pred))


def test_top_and_random_with_one_side_empty_is_undefined_not_a_one_sided_score():
    top_true, top_pred = [[0, 1, 5]], [[1, 2, 8]]
    assert math.isnan(scoring.top_and_random_score(top_true, top_pred, [], []))
    assert math.isnan(scoring.top_and_random_score([], [], top_true, top_pred))


def test_random_only_score_is_pooled_over_random_records():
    assert scoring.random_only_score([[0, 1], [2, 3]], [[0, 1], [3, 2]]) == pytest.approx(
        scoring.pearson([0, 1, 2, 3], [0, 1, 3, 2])
    )


def test_balanced_accuracy_hand_computed():
    # positives (idx 0, 4) both right: TPR 1; negatives (1, 2, 3): 2 of 3 right -> (1 + 2/3) / 2
    assert scoring.balanced_accuracy([True, True, False, False, True], [True, False, False, False, True]) == (
        pytest.approx(5 / 6)
    )
    assert math.isnan(scoring.balanced_accuracy([True, False], [True, True]))
    with pytest.raises(ValueError):
        scoring.balanced_accuracy([True], [True, False])


def test_probability_accuracy_thresholds_yes_probabilities():
    probs, truth = [0.9, 0.6, 0.4, 0.1], [True, False, True, False]
    assert scoring.probability_accuracy(probs, truth) == pytest.approx(0.5)  # 0.6 -> yes (wrong), 0.4 -> no
    assert scoring.probability_accuracy(probs, truth, threshold=0.3) == pytest.approx(0.75)
    assert scoring.auroc(probs, truth) == pytest.approx(0.75)  # 3 of the 4 (yes, no) pairs ordered right
    assert math.isnan(scoring.auroc([0.2, 0.9], [True, True]))  # one class only
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scoring.probability_accuracy([1.5], [True])


def test_expected_value_from_probs_logprobs_and_mappings():
    assert scoring.expected_value([0, 0, 1]) == pytest.approx(2.0)
    assert scoring.expected_value([0.5] + [0] * 8 + [0.5]) == pytest.approx(4.5)
    assert scoring.expected_value([2, 2]) == pytest.approx(0.5)  # renormalised
    assert scoring.expected_value([math.log(0.25), math.log(0.75)], log=True) == pytest.approx(0.75)
    assert scoring.expected_value({"3": 0.0, "7": 0.0}, log=True) == pytest.approx(5.0)
    assert scoring.expected_value({9: -math.inf, 4: -1.0}, log=True) == pytest.approx(4.0)
    # logits and logprobs of one distribution give the same value (softmax is shift-invariant)
    assert scoring.expected_value([1.0, 2.0, 3.0], log=True) == pytest.approx(
        scoring.expected_value([11.0, 12.0, 13.0], log=True)
    )


@pytest.mark.parametrize(
    "weights, log",
    [
        ([], False),
        ([0, 0], False),
        ([-1, 2], False),
        ({10: 1.0}, False),
        ([float("nan"), 0.0], True),
        ([-math.inf, -math.inf], True),
    ],
)
def test_expected_value_rejects_invalid_weights(weights, log):
    with pytest.raises(ValueError, match="expected_value"):
        scoring.expected_value(weights, log=log)
