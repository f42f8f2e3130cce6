"""Scorers: an explanation + a simulator (or a Yes/No judge) + a feature's held-out exemplars -> scores.

Apart from both the simulators (which only predict) and `neuroscribe.scoring` (pure metrics over
numbers), as OpenAI's neuron-explainer keeps `scoring.py` apart from `simulator.py`. A scorer only
ever reads held-out splits, and every scorer takes the split by the store's own name (no default:
`records.SplitNames` says which split selects and which reports).

The conventions behind every score (the README's scoring section says the same):
- Target. The truth a simulation is correlated with is relu(activation) by default (`target="relu"`):
  stored activations already carry the feature's polarity, so a `+` feature is scored on how far `a`
  rises above 0 and a `-` feature on how far `-a` does, which is what the prompt displays and the
  fine-tuned simulator learns. `target="raw"` keeps the signed value. Every score records its target.
- Sides. What is scored is set by the store's sampling protocol (`neuroscribe.protocols`; recorded as
  `sampling`): top side = the split's scored top, quantile and interval exemplars (strongest first);
  random side = its random exemplars; anthropic also scores out-of-context tokens (each read after a
  neutral context, `corpus.neutral_context`), as a part of their own (below).
  Inactive, hard-negative and other-context exemplars never enter a simulation score.
- Balance. transluce and openai (`balanced`): the score pools all tokens of the two sides mixed 1:1:
  k = min(n_top, n_random) records of each, at evenly spaced positions of each side's order.
  anthropic: every scored window's tokens pooled as they are (40 per split: 6 top, 24 interval,
  10 random), no balancing; the 20 out-of-context tokens are scored apart (`out_of_context_score`, r
  over those 20 tokens, one each), as the paper reports them separately. Pooled with the ~2,500 window
  tokens they would weigh under 1% (our reading; weighting each exemplar equally would be the other).
  The counts used and held are recorded (`n_top`, `n_random`, `n_out_of_context`, `n_top_held`,
  `n_random_held`); collect's defaults make the 1:1 sides equal.
- Insufficient. A split without a top/quantile exemplar or without a random one is never scored:
  NaN, status "insufficient", with the reason (no random-only fallback).
- Failures. An unparseable explanation is NaN with status "unparsed"; a constant simulation (or a
  constant truth) is NaN with status "undefined". Tokens a simulator could not read are dropped from
  the score and counted, never zeroed. In a headline mean (`headline`), "unparsed" and "undefined" count
  as 0.0, the correlation of a prediction that carries no information; "insufficient" features are
  left out for every explainer alike, so paired comparisons always cover the same features. As 0.0 ranks
  a failure below an anti-correlated explanation, eval also reports each mean with failures counted as
  the feature's null-explanation score (`eval.results.failure_as_null`).
- Labels (judges). A token is active when its target exceeds JUDGE_ACTIVE_FRACTION of the feature's max
  (default 0.0: delphi's "any activation > 0"; `active_fraction` sets it, and every judge result records
  it), an exemplar when any of its tokens is, whatever source mined it. Detection asks, per held-out
  exemplar (each window once), whether the unit fires on it; fuzzing whether the marked tokens are the
  ones it fires on, the decoys carrying a real activating exemplar's marks (its run structure). Both
  report balanced accuracy at P(yes) >= 0.5 and AUROC of P(yes).
- Version. `SCORING_VERSION` names this set of conventions (not the sampling protocol of
  `neuroscribe.protocols`); it is part of every score's cache key, so a changed target, balance or label
  rule never reuses an old score. Records and cache keys keep the field name `protocol` for it, so
  stored scores stay readable.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from typing import get_args

from neuroscribe import scoring
from neuroscribe.cache import Cache, cache_key
from neuroscribe.configs import Target
from neuroscribe.prompts import detection_messages, fuzzing_messages
from neuroscribe.protocols import DEFAULT_PROTOCOL, protocol
from neuroscribe.records import (
    ACTIVE_FRACTION,
    OUT_OF_CONTEXT,
    POSITIVE_SOURCES,
    Exemplar,
    Explanation,
    FeatureExemplars,
    ScoredExplanation,
    SimulatedExemplar,
    from_json,
    insufficiency,
    is_activating,
    to_json,
)
from neuroscribe.simulators.base import Simulator, YesNoJudge

SCORING_VERSION = "sim-v3"  # bump whenever a convention of the module doc changes (v3: out-of-context scored apart)
TARGETS: tuple[str, ...] = get_args(Target)  # written once, as the config type
FAILURE_SCORE = 0.0  # what an unparsed explanation or a constant simulation counts as in a headline mean
FUZZING_VARIANTS = ("default", "active", "scattered")


def held_out(record: FeatureExemplars, split: str) -> list[Exemplar]:
    if split == "explain":
        raise ValueError(f"feature {record.feature.key}: scoring on the explain split; use a held-out split")
    return record.select(split=split)


def top_side(exemplars: Sequence[Exemplar], sampling: str = DEFAULT_PROTOCOL) -> list[Exemplar]:
    """The scored top, quantile and interval exemplars, strongest first (the order the 1:1 balance spaces
    over), then (anthropic) the out-of-context tokens."""
    scored = protocol(sampling).scored
    order = {s: i for i, s in enumerate((*POSITIVE_SOURCES, OUT_OF_CONTEXT))}
    return sorted(
        (e for e in exemplars if e.source in order and e.source in scored),
        key=lambda e: (order[e.source], -e.quantile, e.rank),
    )


def random_side(exemplars: Sequence[Exemplar]) -> list[Exemplar]:
    return sorted((e for e in exemplars if e.source == "random"), key=lambda e: e.rank)


def split_gap(record: FeatureExemplars, split: str) -> str:
    """Why `split` cannot be scored for this feature ("" when it can; `records.insufficiency`)."""
    held = held_out(record, split)
    positives = sum(e.source in POSITIVE_SOURCES for e in top_side(held, record.protocol))
    return insufficiency(positives, len(random_side(held)))


def scored_exemplars(record: FeatureExemplars, split: str) -> list[Exemplar]:
    """What a simulation score on `split` simulates, in order: top side, then random side."""
    held = held_out(record, split)
    return top_side(held, record.protocol) + random_side(held)


def target_values(values: Sequence[float], target: str) -> list[float]:
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: choose one of {list(TARGETS)}")
    return [max(0.0, float(v)) for v in values] if target == "relu" else [float(v) for v in values]


def _readable(sims: Sequence[SimulatedExemplar], target: str) -> tuple[list[list[float]], list[list[float]], int]:
    """(true target, predicted) per exemplar without the tokens whose prediction is NaN (unreadable),
    and how many tokens were dropped; an exemplar with no readable token is left out altogether."""
    true, pred, failed = [], [], 0
    for s in sims:
        keep = [i for i, v in enumerate(s.predicted) if not math.isnan(v)]
        failed += len(s.predicted) - len(keep)
        if keep:
            values = target_values(s.true_activations, target)
            true.append([values[i] for i in keep])
            pred.append([s.predicted[i] for i in keep])
    return true, pred, failed


def simulate_and_score(
    simulator: Simulator,
    explanation: Explanation,
    record: FeatureExemplars,
    split: str,
    target: str = "relu",
    in_sample: bool = False,
) -> ScoredExplanation:
    """Score one explanation on the held-out `split` of its feature (conventions: module doc)."""
    return simulate_and_score_many(simulator, [explanation], record, split, target, in_sample)[0]


def simulate_and_score_many(
    simulator: Simulator,
    explanations: Sequence[Explanation],
    record: FeatureExemplars,
    split: str,
    target: str = "relu",
    in_sample: bool = False,
) -> list[ScoredExplanation]:
    """`simulate_and_score` for several explanations of one feature. The simulator gets them in one
    `simulate_many` call over the shared exemplars, so a local one batches them into one forward."""
    for e in explanations:
        if e.feature != record.feature.key:
            raise ValueError(f"explanation is for {e.feature!r} but the exemplars are for {record.feature.key!r}")
    held = held_out(record, split)
    top, rnd = top_side(held, record.protocol), random_side(held)
    base = dict(
        simulator=simulator.spec,
        split=split,
        target=target,
        protocol=SCORING_VERSION,
        sampling=record.protocol,
        in_sample=in_sample,
        n_top_held=len(top),
        n_random_held=len(rnd),
    )
    gap = split_gap(record, split)
    if gap:
        return [ScoredExplanation(e, math.nan, status="insufficient", reason=gap, **base) for e in explanations]
    todo = [e for e in explanations if e.ok]
    many = getattr(simulator, "simulate_many", None)  # any object with `simulate` is a simulator
    texts = [e.text for e in todo]
    runs = iter(many(texts, top + rnd) if many else [simulator.simulate(t, top + rnd) for t in texts])
    out = []
    for e in explanations:
        if not e.ok:
            out.append(ScoredExplanation(e, math.nan, status="unparsed", reason=e.error, **base))
            continue
        sims = next(runs)
        if len(sims) != len(top) + len(rnd):
            raise ValueError(
                f"simulator {simulator.spec} returned {len(sims)} simulations for {len(top) + len(rnd)} exemplars"
            )
        out.append(_scored(e, sims, len(top), target, base, protocol(record.protocol).balanced))
    return out


def _scored(
    explanation: Explanation, sims: list[SimulatedExemplar], n_top: int, target: str, base: dict, balanced: bool
) -> ScoredExplanation:
    alone = [s for s in sims[:n_top] if s.source == OUT_OF_CONTEXT]
    top_true, top_pred, top_failed = _readable([s for s in sims[:n_top] if s.source != OUT_OF_CONTEXT], target)
    rnd_true, rnd_pred, rnd_failed = _readable(sims[n_top:], target)
    ooc_true, ooc_pred, ooc_failed = _readable(alone, target)
    if balanced:
        score = scoring.top_and_random_score(top_true, top_pred, rnd_true, rnd_pred)
        k_top = k_random = min(len(top_true), len(rnd_true))
    else:
        score = scoring.pooled_correlation(top_true + rnd_true, top_pred + rnd_pred)
        k_top, k_random = len(top_true), len(rnd_true)
    status, reason = "ok", ""
    if math.isnan(score):
        status, reason = "undefined", "the simulation (or the truth) is constant over the scored tokens"
    return ScoredExplanation(
        explanation,
        score,
        random_only_score=scoring.random_only_score(rnd_true, rnd_pred),
        out_of_context_score=scoring.pooled_correlation(ooc_true, ooc_pred) if ooc_true else math.nan,
        status=status,
        reason=reason,
        n_exemplars=len(sims),
        n_top=k_top,
        n_random=k_random,
        n_out_of_context=len(ooc_true),
        n_parse_failures=top_failed + rnd_failed + ooc_failed,
        simulations=tuple(sims),
        **base,
    )


def headline(scored: ScoredExplanation) -> float | None:
    """The value a headline mean uses (module doc): the score; FAILURE_SCORE for an unparsed explanation
    or a constant simulation; None (left out for everyone) for an insufficient feature."""
    if scored.status == "insufficient":
        return None
    return scored.score if scored.status == "ok" else FAILURE_SCORE


def _held_out_fingerprint(record: FeatureExemplars, split: str) -> str:
    rows = [(e.window_id, e.source, e.rank, e.tokens, e.activations) for e in record.select(split=split)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:24]


def cached_score(
    simulator: Simulator,
    explanation: Explanation,
    record: FeatureExemplars,
    split: str,
    cache: Cache | None,
    stage: str = "score",
    target: str = "relu",
    in_sample: bool = False,
) -> ScoredExplanation:
    """simulate_and_score, looked up in / stored to the disk cache (keyed by the protocol, target,
    simulator spec, explanation text, feature, split and the held-out exemplars' content)."""
    return cached_scores(simulator, [explanation], record, split, cache, stage, target, in_sample)[0]


def cached_scores(
    simulator: Simulator,
    explanations: Sequence[Explanation],
    record: FeatureExemplars,
    split: str,
    cache: Cache | None,
    stage: str = "score",
    target: str = "relu",
    in_sample: bool = False,
) -> list[ScoredExplanation]:
    """`cached_score` for several explanations of one feature: hits come from the cache, and every
    miss is simulated in one `simulate_and_score_many` call."""
    if cache is None:
        return simulate_and_score_many(simulator, explanations, record, split, target, in_sample)
    held = _held_out_fingerprint(record, split)
    sampling = protocol(record.protocol).name

    def key_of(e: Explanation) -> str:
        return cache_key(
            "simulate",
            simulator.spec,
            {
                "protocol": SCORING_VERSION,
                **({} if sampling == DEFAULT_PROTOCOL else {"sampling": sampling}),
                "target": target,
                "explanation": e.text,
                "feature": record.feature.key,
                "split": split,
                "held_out": held,
            },
        )

    out: list[ScoredExplanation | None] = [None] * len(explanations)
    misses = []
    for i, e in enumerate(explanations):
        hit = cache.get(key_of(e)) if e.ok else None
        if hit is None:
            misses.append(i)
            continue
        cache.record_hit(key_of(e), kind="simulate", model=simulator.spec, stage=stage)
        scored = from_json(ScoredExplanation, hit)
        out[i] = ScoredExplanation(**{**scored.__dict__, "explanation": e, "in_sample": in_sample})
    ident = [(e.text, e.ok) for e in explanations]
    unique = sorted({ident[i]: i for i in reversed(misses)}.values())  # one simulation per distinct text
    fresh = dict(
        zip(
            unique,
            simulate_and_score_many(simulator, [explanations[i] for i in unique], record, split, target, in_sample),
        )
    )
    for i in unique:
        scored = fresh[i]
        if explanations[i].ok:
            n_tokens = sum(len(s.predicted) for s in scored.simulations)
            cache.put(
                key_of(explanations[i]),
                to_json(scored),
                kind="simulate",
                model=simulator.spec,
                stage=stage,
                tokens_in=n_tokens,
            )
    first = {ident[i]: fresh[i] for i in unique}
    for i in misses:
        if out[i] is None:
            same = first[ident[i]]
            out[i] = same if i in fresh else ScoredExplanation(**{**same.__dict__, "explanation": explanations[i]})
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- judges


JUDGE_ACTIVE_FRACTION = 0.0
"""The judges' label rule: a token is active when its target exceeds this fraction of the feature's max,
a window when any token is. delphi's published rule is any activation > 0, which is 0.0 here; collect's
ACTIVE_FRACTION (0.1, used to mine inactive windows and hard negatives) is the other common choice
(pass it as `active_fraction`). Every judge result records the value it used."""


def _active_tokens(e: Exemplar, fmax: float, target: str, fraction: float) -> list[bool]:
    return [is_activating(a, fmax, fraction) for a in target_values(e.activations, target)]


def detection_items(
    record: FeatureExemplars, split: str, target: str = "relu", active_fraction: float = JUDGE_ACTIVE_FRACTION
) -> list[tuple[Exemplar, bool]]:
    """(exemplar, activating?) for every held-out window of the split, once each, labelled by its own peak
    (`JUDGE_ACTIVE_FRACTION`; out-of-context tokens are not windows of text: left out)."""
    fmax, seen, out = record.reference_max, set(), []
    for e in held_out(record, split):
        if e.window_id in seen or e.source == OUT_OF_CONTEXT:
            continue
        seen.add(e.window_id)
        out.append((e, any(_active_tokens(e, fmax, target, active_fraction))))
    return out


def _judged(probs: Sequence[float], truth: Sequence[bool]) -> tuple[float, float]:
    return scoring.probability_accuracy(probs, truth), scoring.auroc(probs, truth)


def detection_score(
    judge: YesNoJudge,
    explanation: Explanation,
    record: FeatureExemplars,
    split: str,
    target: str = "relu",
    active_fraction: float = JUDGE_ACTIVE_FRACTION,
) -> dict[str, float]:
    """{detection, detection_auroc}: does the unit fire on this excerpt? (NaN without both classes)."""
    items = detection_items(record, split, target, active_fraction)
    if not explanation.ok or not items:
        return {"detection": math.nan, "detection_auroc": math.nan}
    probs = judge.yes_probabilities([detection_messages(explanation.text, e.tokens) for e, _ in items])
    acc, auc = _judged(probs, [y for _, y in items])
    return {"detection": acc, "detection_auroc": auc}


def _runs(marks: Sequence[bool]) -> list[tuple[int, int]]:
    """(start, length) of each run of marked tokens."""
    out, i = [], 0
    while i < len(marks):
        if marks[i]:
            j = i
            while j < len(marks) and marks[j]:
                j += 1
            out.append((i, j - i))
            i = j
        else:
            i += 1
    return out


def _placed_runs(lengths: Sequence[int], taken: Sequence[bool], rng: random.Random) -> tuple[bool, ...] | None:
    """Runs of `lengths` placed at random off the `taken` tokens, never merging (None when they do not fit)."""
    taken = list(taken)
    marks = [False] * len(taken)
    for length in sorted(lengths, reverse=True):
        starts = [s for s in range(len(taken) - length + 1) if not any(taken[s : s + length])]
        if not starts:
            return None
        s = rng.choice(starts)
        for t in range(max(0, s - 1), min(len(taken), s + length + 1)):
            taken[t] = True  # the run and its neighbours: decoy runs never merge into one
        for t in range(s, s + length):
            marks[t] = True
    return tuple(marks)


def _decoy_runs(active: Sequence[bool], rng: random.Random) -> tuple[bool, ...] | None:
    """The true active runs' lengths placed at random elsewhere, off the true active tokens (None when
    they do not fit)."""
    return _placed_runs([n for _, n in _runs(active)], active, rng)


def _copied_marks(real: Sequence[bool], n_tokens: int, rng: random.Random) -> tuple[bool, ...] | None:
    """A real activating exemplar's marks laid on a window of `n_tokens`: the same runs at the same offsets
    where the window is long enough (so decoys and true marks share one distribution of mark patterns),
    else the same run lengths at random offsets (None when they do not fit)."""
    runs = _runs(real)
    if runs and all(start + length <= n_tokens for start, length in runs):
        marks = [False] * n_tokens
        for start, length in runs:
            marks[start : start + length] = [True] * length
        return tuple(marks)
    return _placed_runs([n for _, n in runs], [False] * n_tokens, rng) if runs else None


def fuzzing_items(
    record: FeatureExemplars,
    split: str,
    seed: int = 0,
    variant: str = "default",
    target: str = "relu",
    active_fraction: float = JUDGE_ACTIVE_FRACTION,
) -> list[tuple[Exemplar, tuple[bool, ...], bool]]:
    """(exemplar, marked tokens, truth) pairs for delphi's fuzzing, each seeded by the window id.

    Every variant marks each activating exemplar's true active tokens (True). The decoys (False):
    default: each non-activating exemplar with the marks of a real activating exemplar (drawn by the
    seed) copied onto it, the run structure included (delphi's reading); scattered marks would be a cue
    a judge can use without reading the explanation (true marks come in runs, scattered ones do not).
    scattered: each non-activating exemplar with as many single tokens marked at random as activating
    exemplars mark on average (the earlier default, kept as an option).
    active: every activating exemplar again, with decoy runs of its own run lengths placed off its active
    tokens.
    """
    if variant not in FUZZING_VARIANTS:
        raise ValueError(f"fuzzing variant {variant!r}: choose one of {list(FUZZING_VARIANTS)}")
    fmax = record.reference_max
    items = detection_items(record, split, target, active_fraction)
    positives = [(e, tuple(_active_tokens(e, fmax, target, active_fraction))) for e, y in items if y]
    out: list[tuple[Exemplar, tuple[bool, ...], bool]] = [(e, marks, True) for e, marks in positives]
    if variant == "default" and positives:
        for e, y in items:
            if not y:
                rng = random.Random(seed * 1_000_003 + e.window_id)
                decoy = _copied_marks(rng.choice(positives)[1], len(e.tokens), rng)
                if decoy is not None:
                    out.append((e, decoy, False))
    elif variant == "scattered":
        mean = round(sum(sum(m) for _, m in positives) / len(positives)) if positives else 0
        for e, y in items:
            if not y and mean and len(e.tokens) >= mean:
                chosen = set(random.Random(seed * 1_000_003 + e.window_id).sample(range(len(e.tokens)), mean))
                out.append((e, tuple(i in chosen for i in range(len(e.tokens))), False))
    elif variant == "active":
        for e, marks in positives:
            decoy = _decoy_runs(marks, random.Random(seed * 1_000_003 + e.window_id))
            if decoy is not None:
                out.append((e, decoy, False))
    return out


def fuzzing_score(
    judge: YesNoJudge,
    explanation: Explanation,
    record: FeatureExemplars,
    split: str,
    seed: int = 0,
    variant: str = "default",
    target: str = "relu",
    active_fraction: float = JUDGE_ACTIVE_FRACTION,
) -> dict[str, float]:
    """{fuzzing[_VARIANT], fuzzing[_VARIANT]_auroc}: are the marked tokens the ones the unit fires on?"""
    name = "fuzzing" if variant == "default" else f"fuzzing_{variant}"
    items = fuzzing_items(record, split, seed, variant, target, active_fraction)
    if not explanation.ok or not items:
        return {name: math.nan, f"{name}_auroc": math.nan}
    probs = judge.yes_probabilities([fuzzing_messages(explanation.text, e.tokens, m) for e, m, _ in items])
    acc, auc = _judged(probs, [t for _, _, t in items])
    return {name: acc, f"{name}_auroc": auc}


JUDGE_SETTINGS = ("active_fraction",)  # keys of a judge result that are settings, not scores


def judge_scores(
    judge: YesNoJudge,
    explanation: Explanation,
    record: FeatureExemplars,
    split: str,
    seed: int = 0,
    target: str = "relu",
    active_fraction: float = JUDGE_ACTIVE_FRACTION,
) -> dict[str, float]:
    """Detection and the default and active fuzzing variants, balanced accuracy and AUROC each, and the
    label threshold they used (`active_fraction`, one of JUDGE_SETTINGS)."""
    return {
        **detection_score(judge, explanation, record, split, target, active_fraction),
        **fuzzing_score(judge, explanation, record, split, seed, "default", target, active_fraction),
        **fuzzing_score(judge, explanation, record, split, seed, "active", target, active_fraction),
        "active_fraction": active_fraction,
    }


# ---------------------------------------------------------------------------------- in-sample guard


def in_sample_features(simulator: Simulator, keys: Sequence[str], allow: bool = False, where: str = "") -> set[str]:
    """The features of `keys` the simulator was trained on. Refused (one error naming them and the
    simulator) unless `allow`, in which case every output marks them in-sample."""
    trained = set(getattr(simulator, "trained_features", ()) or ())
    seen = [k for k in keys if k in trained]
    if seen and not allow:
        raise ValueError(
            f"{where or 'scoring'}: simulator {simulator.spec} was trained on {len(seen)} of these "
            f"features (e.g. {seen[:3]}); its scores there are in-sample. Score other features, or "
            "pass --allow-in-sample to mark them in-sample"
        )
    return set(seen)


__all__ = [
    "ACTIVE_FRACTION",
    "FAILURE_SCORE",
    "JUDGE_ACTIVE_FRACTION",
    "SCORING_VERSION",
    "TARGETS",
    "cached_score",
    "detection_score",
    "fuzzing_score",
    "headline",
    "in_sample_features",
    "judge_scores",
    "simulate_and_score",
]
