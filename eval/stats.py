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
    over features where all three are finite, with a percentile bootstrap over features (NaN where a
    resample's gap is 0)."""
    x, y, z = (
        np.array([math.nan if v is None else float(v) for v in s], dtype=np.float64) for s in (student, base, ceiling)
    )
    keep = ~(np.isnan(x) | np.isnan(y) | np.isnan(z))
    gain, gap = (x - y)[keep], (z - y)[keep]
    if not keep.any():
        return Interval(math.nan, math.nan, math.nan, 0, int((~keep).sum()), confidence)
    _check(confidence, n_resamples)
    rows = np.random.default_rng(seed).integers(0, len(gain), size=(n_resamples, len(gain)))
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = gain[rows].mean(-1) / gap[rows].mean(-1)
        estimate = float(gain.mean() / gap.mean()) if gap.mean() != 0 else math.nan
    stats = stats[np.isfinite(stats)]
    if not stats.size or math.isnan(estimate):
        return Interval(estimate, math.nan, math.nan, len(gain), int((~keep).sum()), confidence)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(
        estimate, min(float(low), estimate), max(float(high), estimate), len(gain), int((~keep).sum()), confidence
    )


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
