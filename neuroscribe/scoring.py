"""Pure scoring functions over lists of numbers. No model calls live here.

Conventions (every caller relies on them):
- Correlation scores are Pearson r computed in float64. They are NaN when either side is empty
  or constant (zero variance): the score is undefined then, and NaN is kept as NaN, never
  coerced to 0. A non-finite input or mismatched lengths raise ValueError instead, because
  they mean a bug upstream, not an undefined score.
- Scores pool all tokens of all records before correlating (as OpenAI's neuron-explainer does),
  rather than averaging per-record r: one long record counts by its token count.
- True activations are raw (negatives kept); predictions are on whatever scale the simulator
  uses. Pearson r is invariant to an affine rescaling of either side, so the 0..9 display scale
  gives the same scores as OpenAI's 0..10 one.

Top-and-random balancing: OpenAI mixes held-out top and random records 1:1. When the two
sides have different counts, both are cut to k = min(n_top, n_random) records, picked at
evenly spaced positions of each side's order (index floor(i * n / k)), so a top side ordered
strongest-first keeps strong and weak records alike. When one side is empty the score is NaN:
a top-only or random-only correlation is another quantity, and callers report such a split as
insufficient rather than score it.

AUROC (`auroc`) is scikit-learn's roc_auc_score of the yes-probabilities; NaN without both classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Records = Sequence[Sequence[float]]


def _as_finite(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite value in {arr[~np.isfinite(arr)][:3].tolist()}")
    return arr


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r of two equal-length sequences; NaN when either is empty or constant."""
    a, b = _as_finite(x, "x"), _as_finite(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"pearson: lengths differ ({a.size} vs {b.size})")
    # Exact constancy test: a mean of identical floats can be off by an ulp, which would leave a
    # tiny spurious variance and turn an undefined score into noise.
    if a.size == 0 or a.max() == a.min() or b.max() == b.min():
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    r = float(np.dot(da, db) / math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db))))
    return max(-1.0, min(1.0, r))


def _pool(records: Records) -> list[float]:
    return [float(v) for rec in records for v in rec]


def pooled_correlation(true_per_record: Records, pred_per_record: Records) -> float:
    """Pearson r over all tokens of all records pooled together (OpenAI's aggregate score)."""
    if len(true_per_record) != len(pred_per_record):
        raise ValueError(f"pooled_correlation: {len(true_per_record)} true records vs {len(pred_per_record)} predicted")
    for i, (t, p) in enumerate(zip(true_per_record, pred_per_record)):
        if len(t) != len(p):
            raise ValueError(f"pooled_correlation: record {i} has {len(t)} true values but {len(p)} predictions")
    return pearson(_pool(true_per_record), _pool(pred_per_record))


def balanced_indices(n: int, k: int) -> list[int]:
    """k evenly spaced indices into a sequence of n (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


def top_and_random_score(top_true: Records, top_pred: Records, random_true: Records, random_pred: Records) -> float:
    """Pooled r over top and random held-out records mixed 1:1 (see the module docstring)."""
    if len(top_true) != len(top_pred) or len(random_true) != len(random_pred):
        raise ValueError("top_and_random_score: each side needs as many predicted records as true ones")
    if not top_true or not random_true:
        return float("nan")
    k = min(len(top_true), len(random_true))
    top_keep = balanced_indices(len(top_true), k)
    rnd_keep = balanced_indices(len(random_true), k)
    true = [top_true[i] for i in top_keep] + [random_true[i] for i in rnd_keep]
    pred = [top_pred[i] for i in top_keep] + [random_pred[i] for i in rnd_keep]
    return pooled_correlation(true, pred)


def random_only_score(random_true: Records, random_pred: Records) -> float:
    """Pooled r over random held-out records only (how well the explanation covers typical text)."""
    return pooled_correlation(random_true, random_pred)


def balanced_accuracy(pred: Sequence[bool], truth: Sequence[bool]) -> float:
    """Mean of the true-positive and true-negative rates; NaN when either class is absent from truth."""
    if len(pred) != len(truth):
        raise ValueError(f"balanced_accuracy: {len(pred)} predictions vs {len(truth)} labels")
    pos = [bool(p) for p, t in zip(pred, truth) if t]
    neg = [bool(p) for p, t in zip(pred, truth) if not t]
    if not pos or not neg:
        return float("nan")
    return 0.5 * (sum(pos) / len(pos) + sum(not p for p in neg) / len(neg))


def probability_accuracy(probs: Sequence[float], truth: Sequence[bool], threshold: float = 0.5) -> float:
    """Balanced accuracy of yes-probabilities cut at `threshold` (>= counts as yes).

    Detection (does this example activate?) and fuzzing (are the marked tokens the right ones?)
    both reduce to this: one yes-probability per example, one boolean truth per example.
    """
    p = _as_finite(probs, "probs")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probability_accuracy: probabilities must lie in [0, 1]")
    return balanced_accuracy([bool(v >= threshold) for v in p], truth)


def auroc(probs: Sequence[float], truth: Sequence[bool]) -> float:
    """Area under the ROC curve of yes-probabilities against boolean truth; NaN when a class is absent."""
    from sklearn.metrics import roc_auc_score

    p = _as_finite(probs, "probs")
    y = np.asarray([bool(t) for t in truth])
    if p.shape != y.shape:
        raise ValueError(f"auroc: {p.size} probabilities vs {y.size} labels")
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, p))


def expected_value(weights: Sequence[float] | Mapping[int | str, float], log: bool = False) -> float:
    """Expected digit under a distribution over the digits 0..9.

    `weights` is either a sequence indexed by digit (length <= 10) or a mapping digit -> weight
    (an HTTP backend's top-k logprobs may miss some digits; missing digits get probability 0).
    With log=False the weights are probabilities (renormalised to sum 1); with log=True they are
    logprobs or logits (softmax over the digits given). Restricting to digits and renormalising
    is exactly what the all-at-once simulator does with a next-token distribution.
    """
    if isinstance(weights, Mapping):
        items = [(int(k), float(v)) for k, v in weights.items()]
    else:
        items = [(i, float(v)) for i, v in enumerate(weights)]
    if not items:
        raise ValueError("expected_value: no digit weights")
    digits = np.array([d for d, _ in items], dtype=np.float64)
    if np.any((digits < 0) | (digits > 9)):
        raise ValueError(f"expected_value: digits must be 0..9, got {sorted(set(digits.tolist()))}")
    w = np.array([v for _, v in items], dtype=np.float64)
    if log:
        if np.any(np.isnan(w)) or np.any(w == np.inf) or np.all(w == -np.inf):
            raise ValueError(f"expected_value: log-weights must be finite or -inf (not all), got {w.tolist()}")
        w = np.exp(w - w.max())  # -inf -> probability 0
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"expected_value: weights must be non-negative with a positive sum, got {w.tolist()}")
    return float(np.dot(digits, w) / w.sum())
