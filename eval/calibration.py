"""Calibration: how well a simulator tells a planted rule's true explanation from wrong ones.

For every planted feature i (rules the simulator never trained on), its `split` exemplars are scored
under the rule's own explanation (the true score) and under other rules' explanations (the wrong
scores: every other rule's, or `n_wrong` drawn per feature with a seeded generator). Reported per
simulator:
- win_rate: the share of (feature, wrong explanation) pairs in which the true explanation scores
  higher; a true score that is not finite loses, a wrong score that is not finite loses to a finite true;
- rank1: for how many features the true explanation scores above every wrong one;
- mean_true / mean_wrong: the mean finite scores.
A good scorer has win_rate near 1 and mean_true well above mean_wrong; a flat one sits near 0.5.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

from neuroscribe.records import Explanation, FeatureExemplars
from neuroscribe.scorers import cached_scores

from .results import fmt

NOTE = (
    "True-vs-wrong: each held-out planted feature's test exemplars scored under its rule's true explanation "
    "and under other rules' explanations; win rate = share of (feature, wrong) pairs the true one wins."
)


def fidelity(true: Sequence[float], wrong: Sequence[Sequence[float]]) -> dict:
    """The calibration statistics (module doc) from per-feature true scores and their wrong scores."""
    wins = pairs = rank1 = 0
    for t, ws in zip(true, wrong):
        t_ok = t is not None and math.isfinite(t)
        beats = [t_ok and (w is None or not math.isfinite(w) or t > w) for w in ws]
        wins += sum(beats)
        pairs += len(ws)
        rank1 += bool(ws) and all(beats)
    finite = lambda xs: [x for x in xs if x is not None and math.isfinite(x)]  # noqa: E731
    flat_wrong = finite([w for ws in wrong for w in ws])
    return {
        "win_rate": wins / pairs if pairs else None,
        "rank1": rank1,
        "n_rules": len(true),
        "mean_true": statistics.fmean(finite(true)) if finite(true) else None,
        "mean_wrong": statistics.fmean(flat_wrong) if flat_wrong else None,
    }


def headline(calibration: dict) -> str:
    """One line per simulator: win rate, rank-1 count, mean true and wrong scores."""
    return "; ".join(
        f"{spec}: true beats wrong in {c['win_rate']:.2f} of pairs, ranks first for {c['rank1']}/{c['n_rules']} "
        f"rules (true {fmt(c['mean_true'])}, wrong {fmt(c['mean_wrong'])})"
        if c["win_rate"] is not None
        else f"{spec}: no rule scored"
        for spec, c in calibration["simulators"].items()
    )


def calibrate(
    simulators: Sequence,
    features: Sequence[FeatureExemplars],
    explanations: Sequence[str],
    names: Sequence[str],
    split: str = "test",
    n_wrong: int | None = None,
    seed: int = 0,
    cache=None,
    limit: dict[str, int] | None = None,
) -> dict:
    """Calibration of every simulator on planted `features` with their true `explanations` (module doc).
    `limit` caps the features a slow simulator is run on (spec -> count: the first ones, in order)."""
    rng = random.Random(seed)
    others = [[j for j in range(len(features)) if j != i] for i in range(len(features))]
    if n_wrong is not None:
        others = [rng.sample(o, min(n_wrong, len(o))) for o in others]
    out = {}
    for sim in simulators:
        n = min(len(features), (limit or {}).get(sim.spec, len(features)))

        def scores(i: int, sim=sim) -> list[float]:  # the true explanation, then the wrong ones: one call
            key = features[i].feature.key
            es = [Explanation(key, explanations[j], "calibration", prompt_style="reference") for j in [i, *others[i]]]
            return [s.score for s in cached_scores(sim, es, features[i], split, cache, stage="calibration")]

        rows = []
        for i in range(n):
            true, *wrong = scores(i)
            rows.append(
                {"rule": names[i], "feature": features[i].feature.key, "true_score": true, "wrong_scores": wrong}
            )
        out[sim.spec] = {**fidelity([r["true_score"] for r in rows], [r["wrong_scores"] for r in rows]), "rules": rows}
    return {"split": split, "note": NOTE, "simulators": out}
