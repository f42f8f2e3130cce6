"""Pure statistics for the eval report: bootstrap confidence intervals, paired differences, win rates.

Conventions:
- NaN (or None, as JSON writes a missing score) means "undefined score" and is left out of every
  statistic; how many were left out is reported beside it (`n_missing`), never hidden.
- Intervals are percentile bootstrap intervals: resample the values (or the pairs) with
  replacement `n_resamples` times from a seeded numpy Generator, compute the statistic on each
  resample, take the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles. The same seed gives
  the same interval.
- Paired statistics resample features, not scores: a feature's two scores stay together, which is
  what makes a student-minus-teacher interval narrower than two separate intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval; all NaN when no value was usable."""

    estimate: float
    low: float
    high: float
    n: int
    n_missing: int = 0
    confidence: float = 0.95

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class WinRate:
    """Student-vs-reference outcomes per feature; rate = (wins + ties / 2) / n."""

    wins: int
    losses: int
    ties: int
    rate: Interval


def finite(values: Sequence[float | None]) -> np.ndarray:
    """The usable values as float64 (None and NaN dropped; infinities are a bug upstream)."""
    arr = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    if np.any(np.isinf(arr)):
        raise ValueError("statistics: infinite score in the input")
    return arr[~np.isnan(arr)]


def _check(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _bootstrap(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_missing: int,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Interval:
    _check(confidence, n_resamples)
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, n_missing, confidence)
    rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    stats = statistic(values[rows])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    estimate = float(statistic(values[None, :])[0])
    # Quantiles of identical floats can differ from the estimate by an ulp; never let that show.
    return Interval(estimate, min(float(low), estimate), max(float(high), estimate), n, n_missing, confidence)


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _median(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=-1)


STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean": _mean, "median": _median}


def bootstrap_ci(
    values: Sequence[float | None],
    statistic: str = "mean",
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The mean (or median) of the finite values with a percentile bootstrap interval."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r}: choose one of {sorted(STATISTICS)}")
    usable = finite(values)
    return _bootstrap(usable, STATISTICS[statistic], len(values) - len(usable), confidence, n_resamples, seed)


def _pairs(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray, int]:
    if len(a) != len(b):
        raise ValueError(f"paired statistics need as many scores on each side ({len(a)} vs {len(b)})")
    x = np.array([math.nan if v is None else float(v) for v in a], dtype=np.float64)
    y = np.array([math.nan if v is None else float(v) for v in b], dtype=np.float64)
    if np.any(np.isinf(x)) or np.any(np.isinf(y)):
        raise ValueError("statistics: infinite score in the input")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep], int((~keep).sum())


def paired_difference(
    a: Sequence[float | None],
    b: Sequence[float | None],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean of a - b over the pairs where both are finite, resampling pairs (features)."""
    x, y, missing = _pairs(a, b)
    return _bootstrap(x - y, _mean, missing, confidence, n_resamples, seed)


def win_rate(
    a: Sequence[float | None],
    b: Sequence[float | None],
    tie_tolerance: float = 1e-9,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> WinRate:
    """How often a beats b per pair: a win counts 1, a tie (|a - b| <= tie_tolerance) 1/2, a loss 0."""
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    x, y, missing = _pairs(a, b)
    d = x - y
    outcome = np.where(np.abs(d) <= tie_tolerance, 0.5, np.where(d > 0, 1.0, 0.0))
    wins = int(np.sum(outcome == 1.0))
    ties = int(np.sum(outcome == 0.5))
    rate = _bootstrap(outcome, _mean, missing, confidence, n_resamples, seed)
    return WinRate(wins, len(outcome) - wins - ties, ties, rate)


def gap_closed(
    student: Sequence[float | None],
    base: Sequence[float | None],
    ceiling: Sequence[float | None],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """How much of the base-to-ceiling gap the student closes: mean(student - base) / mean(ceiling - base)
    over features where all three are finite, with a percentile bootstrap over features.

    A resample whose gap is not positive has no ratio (the ceiling is not above the base there); it is
    kept as an unbounded value of its gain's sign rather than dropped, so the interval is never
    narrowed by discarding the awkward resamples. When an end of the interval is unbounded it is NaN
    (the two differences, gain and gap, are then the numbers to read); nothing is clamped."""
    x, y, z = (
        np.array([math.nan if v is None else float(v) for v in s], dtype=np.float64) for s in (student, base, ceiling)
    )
    keep = ~(np.isnan(x) | np.isnan(y) | np.isnan(z))
    gain, gap = (x - y)[keep], (z - y)[keep]
    missing = int((~keep).sum())
    if not keep.any():
        return Interval(math.nan, math.nan, math.nan, 0, missing, confidence)
    _check(confidence, n_resamples)
    rows = np.random.default_rng(seed).integers(0, len(gain), size=(n_resamples, len(gain)))
    gains, gaps = gain[rows].mean(-1), gap[rows].mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = np.where(gaps > 0, gains / gaps, np.where(gains >= 0, np.inf, -np.inf))
    estimate = float(gain.mean() / gap.mean()) if gap.mean() > 0 else math.nan
    alpha = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(stats, [alpha, 1 - alpha]))
    bounded = lambda q: q if math.isfinite(q) else math.nan  # noqa: E731
    return Interval(estimate, bounded(low), bounded(high), len(gain), missing, confidence)


def clustered_difference(
    a: Sequence,
    b: Sequence,
    clusters: Sequence[str],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean of a - b with a hierarchical bootstrap: features are not independent draws when several share
    a unit (both polarities of a neuron) or a rule family, and a trained explainer is one draw of its
    training seed. Each resample draws seeds with replacement, then clusters with replacement, then
    features with replacement within each drawn cluster; the statistic is the mean difference over
    everything drawn.

    `a`, `b`: per-feature scores, or [seeds][features] matrices (one row per training seed, the same
    features in each). `clusters`: one label per feature. A feature with a non-finite score in any
    seed on either side is left out (counted in n_missing)."""
    x, y = (np.array([[math.nan if v is None else float(v) for v in row] for row in _rows(m)]) for m in (a, b))
    if x.shape != y.shape or x.shape[1] != len(clusters):
        raise ValueError(f"clustered_difference: shapes {x.shape} and {y.shape} for {len(clusters)} cluster labels")
    if np.any(np.isinf(x)) or np.any(np.isinf(y)):
        raise ValueError("statistics: infinite score in the input")
    keep = ~(np.isnan(x) | np.isnan(y)).any(axis=0)
    d = (x - y)[:, keep]
    labels = np.asarray(clusters, dtype=object)[keep]
    if d.shape[1] == 0:
        return Interval(math.nan, math.nan, math.nan, 0, int((~keep).sum()), confidence)
    _check(confidence, n_resamples)
    members = [np.flatnonzero(labels == c) for c in dict.fromkeys(labels)]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for r in range(n_resamples):
        seeds = rng.integers(0, d.shape[0], size=d.shape[0])
        drawn = [
            m[rng.integers(0, len(m), size=len(m))]
            for m in (members[i] for i in rng.integers(0, len(members), len(members)))
        ]
        cols = np.concatenate(drawn)
        stats[r] = d[np.ix_(seeds, cols)].mean()
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(d.mean()), float(low), float(high), d.shape[1], int((~keep).sum()), confidence)


def _rows(m: Sequence) -> list[Sequence]:
    """A per-feature list as one row; a [seeds][features] matrix as it is."""
    return [m] if len(m) == 0 or not isinstance(m[0], (list, tuple, np.ndarray)) else list(m)


def correlation(
    x: Sequence[float | None],
    y: Sequence[float | None],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Pearson r of paired values (NaN/None pairs dropped) with a percentile bootstrap over pairs."""
    a, b, missing = _pairs(x, y)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return Interval(math.nan, math.nan, math.nan, len(a), missing, confidence)
    _check(confidence, n_resamples)
    rows = np.random.default_rng(seed).integers(0, len(a), size=(n_resamples, len(a)))
    xa, ya = a[rows], b[rows]
    xa, ya = xa - xa.mean(-1, keepdims=True), ya - ya.mean(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (xa * ya).sum(-1) / np.sqrt((xa * xa).sum(-1) * (ya * ya).sum(-1))
    r = r[np.isfinite(r)]
    estimate = float(np.corrcoef(a, b)[0, 1])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(r, [alpha, 1 - alpha]) if r.size else (math.nan, math.nan)
    return Interval(estimate, min(float(low), estimate), max(float(high), estimate), len(a), missing, confidence)
