"""Scorers: an explanation + a simulator (or a Yes/No judge) + a feature's held-out exemplars -> scores.

Apart from both the simulators (which only predict) and `neuroscribe.scoring` (pure metrics over
numbers), as OpenAI's neuron-explainer keeps `scoring.py` apart from `simulator.py`:
- `simulate_and_score`: the simulation score (pooled Pearson r, top and random 1:1),
- `cached_score`: the same through the disk cache,
- `detection_score`, `fuzzing_score`: delphi's judges, balanced accuracy of Yes/No probabilities.
A scorer only ever reads held-out splits (`held_out` refuses the explain split).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence

from neuroscribe import scoring
from neuroscribe.cache import Cache, cache_key
from neuroscribe.prompts import POSITIVE_SOURCES, detection_messages, fuzzing_messages, normalise
from neuroscribe.records import (
    Exemplar,
    Explanation,
    FeatureExemplars,
    ScoredExplanation,
    SimulatedExemplar,
    from_json,
    to_json,
)
from neuroscribe.simulators.base import Simulator, YesNoJudge

NEGATIVE_SOURCES = ("random", "hard_negative")


def held_out(record: FeatureExemplars, split: str) -> list[Exemplar]:
    if split == "explain":
        raise ValueError(f"feature {record.feature.key}: scoring on the explain split; use a held-out split")
    return record.select(split=split)


def _top_side(exemplars: Sequence[Exemplar]) -> list[Exemplar]:
    """Top then quantile exemplars, strongest first (the order `top_and_random_score` spaces over)."""
    order = {s: i for i, s in enumerate(POSITIVE_SOURCES)}
    return sorted(
        (e for e in exemplars if e.source in POSITIVE_SOURCES), key=lambda e: (order[e.source], -e.quantile, e.rank)
    )


def _readable(sims: Sequence[SimulatedExemplar]) -> tuple[list[list[float]], list[list[float]], int]:
    """(true, predicted) per exemplar without the tokens whose prediction is NaN (unreadable), and
    how many tokens were dropped; an exemplar with no readable token is left out altogether."""
    true, pred, failed = [], [], 0
    for s in sims:
        keep = [i for i, v in enumerate(s.predicted) if not math.isnan(v)]
        failed += len(s.predicted) - len(keep)
        if keep:
            true.append([s.true_activations[i] for i in keep])
            pred.append([s.predicted[i] for i in keep])
    return true, pred, failed


def simulate_and_score(
    simulator: Simulator, explanation: Explanation, record: FeatureExemplars, split: str = "score"
) -> ScoredExplanation:
    """Score one explanation on the held-out `split` of its feature.

    Top side = top + quantile exemplars, random side = random exemplars (hard negatives are for
    detection only); `score` mixes the two 1:1 as documented in `neuroscribe.scoring`. Tokens a
    simulator could not read (NaN predictions, e.g. from an HTTP backend) are dropped from the
    scores, never zeroed, and counted in `n_parse_failures` (tokens); `simulations` keeps them as
    NaN. An explanation that failed to parse (ok=False) gets a NaN score without any simulation.
    """
    if explanation.feature != record.feature.key:
        raise ValueError(f"explanation is for {explanation.feature!r} but the exemplars are for {record.feature.key!r}")
    held = held_out(record, split)
    top, rnd = _top_side(held), [e for e in held if e.source == "random"]
    if not explanation.ok:
        return ScoredExplanation(explanation, float("nan"), simulator=simulator.spec, split=split)
    if not top and not rnd:
        raise ValueError(f"feature {record.feature.key}: no top/quantile/random exemplars in split {split!r}")
    sims = simulator.simulate(explanation.text, top + rnd)
    if len(sims) != len(top) + len(rnd):
        raise ValueError(
            f"simulator {simulator.spec} returned {len(sims)} simulations for {len(top) + len(rnd)} exemplars"
        )
    top_true, top_pred, top_failed = _readable(sims[: len(top)])
    rnd_true, rnd_pred, rnd_failed = _readable(sims[len(top) :])
    return ScoredExplanation(
        explanation=explanation,
        score=scoring.top_and_random_score(top_true, top_pred, rnd_true, rnd_pred),
        random_only_score=scoring.random_only_score(rnd_true, rnd_pred),
        simulator=simulator.spec,
        split=split,
        n_exemplars=len(sims),
        n_parse_failures=top_failed + rnd_failed,
        simulations=tuple(sims),
    )


def detection_score(
    judge: YesNoJudge, explanation: Explanation, record: FeatureExemplars, split: str = "score"
) -> float:
    """Balanced accuracy of 'does the unit activate on this excerpt?'.

    Truth comes from the exemplar's source: top/quantile are activating, random/hard_negative not.
    """
    held = [e for e in held_out(record, split) if e.source in POSITIVE_SOURCES + NEGATIVE_SOURCES]
    if not explanation.ok:
        return math.nan
    probs = judge.yes_probabilities([detection_messages(explanation.text, e.tokens) for e in held])
    return scoring.probability_accuracy(probs, [e.source in POSITIVE_SOURCES for e in held])


def fuzzing_pairs(record: FeatureExemplars, split: str = "score", seed: int = 0):
    """(exemplar, marked, truth): the truly active tokens marked (True), and as many random inactive
    tokens of the same exemplar marked (False). Active = display digit >= 1 on the split's scale."""
    positives = _top_side(held_out(record, split))
    max_value = max((a for e in positives for a in e.activations), default=0.0)
    pairs = []
    for e in positives:
        active = [d > 0 for d in normalise(e.activations, max_value)]
        idle = [i for i, a in enumerate(active) if not a]
        n = sum(active)
        if n == 0 or len(idle) < n:
            continue
        decoy = set(random.Random(seed * 1_000_003 + e.window_id).sample(idle, n))
        pairs.append((e, tuple(active), True))
        pairs.append((e, tuple(i in decoy for i in range(len(active))), False))
    return pairs


def fuzzing_score(
    judge: YesNoJudge, explanation: Explanation, record: FeatureExemplars, split: str = "score", seed: int = 0
) -> float:
    """Balanced accuracy of 'are the marked tokens the ones the unit activates on?' (NaN: no pairs)."""
    pairs = fuzzing_pairs(record, split, seed)
    if not pairs or not explanation.ok:
        return math.nan
    probs = judge.yes_probabilities([fuzzing_messages(explanation.text, e.tokens, m) for e, m, _ in pairs])
    return scoring.probability_accuracy(probs, [t for _, _, t in pairs])


def _held_out_fingerprint(record: FeatureExemplars, split: str) -> str:
    rows = [(e.window_id, e.source, e.tokens, e.activations) for e in record.select(split=split)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:24]


def cached_score(
    simulator, explanation: Explanation, record: FeatureExemplars, split: str, cache: Cache | None, stage: str = "score"
) -> ScoredExplanation:
    """simulate_and_score, looked up in / stored to the disk cache."""
    if cache is None or not explanation.ok:
        return simulate_and_score(simulator, explanation, record, split)
    key = cache_key(
        "simulate",
        simulator.spec,
        {
            "explanation": explanation.text,
            "feature": record.feature.key,
            "split": split,
            "held_out": _held_out_fingerprint(record, split),
        },
    )
    hit = cache.get(key)
    if hit is not None:
        cache.record_hit(key, kind="simulate", model=simulator.spec, stage=stage)
        return ScoredExplanation(**{**from_json(ScoredExplanation, hit).__dict__, "explanation": explanation})
    scored = simulate_and_score(simulator, explanation, record, split)
    n_tokens = sum(len(s.predicted) for s in scored.simulations)
    cache.put(key, to_json(scored), kind="simulate", model=simulator.spec, stage=stage, tokens_in=n_tokens)
    return scored
