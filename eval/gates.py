"""Validity gates: may a simulator's scores of planted features be trusted as a benchmark?

A judge that rewards wording instead of content would crown whoever copies its training grammar. Four
gates, each a pure function of scores the calibration computes on held-out planted rules; every eval
report with planted features prints them before any result, and names a failed one in its first
paragraph:

(a) near_miss — the true explanation beats wrong explanations of the *same family* (another word, another
    suffix: same grammar, other content), so content, not template, is what is rewarded;
(b) unseen_families — the true explanation beats wrong ones on rules of families the simulator never
    trained on;
(c) paraphrases — every true phrasing, not just the template one, beats the wrong explanations, and the
    paraphrases keep most of the template phrasing's score (a wording-only judge fails here);
(d) ceiling — the true rule scores at least as high as the teacher's best and the top-tokens heuristic on
    the same features (paired mean difference >= 0): a judge that prefers a heuristic to the truth is no
    ceiling.

Conventions: a non-finite true score loses every pair; a non-finite wrong score loses to a finite true
one; a gate with no pair to judge is "not measured" (not passed). Thresholds are `GateConfig` fields.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GateConfig:
    """Pass marks of the gates (module doc)."""

    win_rate: float = 0.75
    """(a), (b), (c): the least share of (true, wrong) pairs the true explanation must win."""
    paraphrase_ratio: float = 0.6
    """(c): the least mean paraphrase score as a share of the mean template-phrasing score."""
    ceiling_margin: float = 0.0
    """(d): the true rule's paired mean difference over the teacher and top tokens must be >= -margin."""


@dataclass(frozen=True)
class RuleScores:
    """One held-out planted rule as the calibration scored it."""

    rule: str
    family: str
    family_trained: bool  # the simulator trained on rules of this family
    true: float  # the rule's template phrasing
    paraphrases: tuple[float, ...] = ()  # its natural paraphrases (no template wording)
    near_miss: tuple[float, ...] = ()  # wrong explanations of the same family
    other_wrong: tuple[float, ...] = ()  # wrong explanations of other families
    teacher: float | None = None  # the teacher's best explanation, same exemplars
    top_tokens: float | None = None  # the top-tokens heuristic, same exemplars


@dataclass(frozen=True)
class Gate:
    name: str
    question: str
    passed: bool | None  # None: not measured (no pair to judge)
    value: float | None
    threshold: float
    n: int
    detail: str


def _ok(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def win_share(pairs: Sequence[tuple[float | None, float | None]]) -> float | None:
    """Share of (true, wrong) pairs the true score wins (module conventions); None without pairs."""
    if not pairs:
        return None
    return sum(_ok(t) and (not _ok(w) or t > w) for t, w in pairs) / len(pairs)


def _threshold_gate(name: str, question: str, pairs: list, threshold: float, what: str) -> Gate:
    share = win_share(pairs)
    passed = None if share is None else share >= threshold
    detail = f"true beats {what} in {share:.2f} of {len(pairs)} pairs" if share is not None else f"no {what}"
    return Gate(name, question, passed, share, threshold, len(pairs), detail)


def near_miss(rules: Sequence[RuleScores], cfg: GateConfig = GateConfig()) -> Gate:
    pairs = [(r.true, w) for r in rules for w in r.near_miss]
    question = "(a) does the true rule beat near-miss wrong rules of its own family?"
    return _threshold_gate("near_miss", question, pairs, cfg.win_rate, "same-family wrong explanations")


def unseen_families(rules: Sequence[RuleScores], cfg: GateConfig = GateConfig()) -> Gate:
    pairs = [(r.true, w) for r in rules if not r.family_trained for w in (*r.near_miss, *r.other_wrong)]
    question = "(b) does the true rule beat wrong ones on families the simulator never trained on?"
    return _threshold_gate("unseen_families", question, pairs, cfg.win_rate, "wrong explanations (unseen families)")


def paraphrases(rules: Sequence[RuleScores], cfg: GateConfig = GateConfig()) -> Gate:
    question = "(c) do paraphrases of the true rule (no template wording) score like the template phrasing?"
    pairs = [(p, w) for r in rules for p in r.paraphrases for w in (*r.near_miss, *r.other_wrong)]
    share = win_share(pairs)
    template = [r.true for r in rules if r.paraphrases and _ok(r.true)]
    para = [p if _ok(p) else 0.0 for r in rules for p in r.paraphrases]
    if share is None or not template:
        return Gate("paraphrases", question, None, None, cfg.win_rate, 0, "no paraphrase scored")
    mean_t, mean_p = statistics.fmean(template), statistics.fmean(para)
    ratio = mean_p / mean_t if mean_t > 0 else math.nan
    passed = share >= cfg.win_rate and _ok(ratio) and ratio >= cfg.paraphrase_ratio
    detail = (
        f"paraphrases beat wrong explanations in {share:.2f} of {len(pairs)} pairs; mean paraphrase score "
        f"{mean_p:.3f} vs template phrasing {mean_t:.3f} (ratio {ratio:.2f}, needs >= {cfg.paraphrase_ratio})"
    )
    return Gate("paraphrases", question, passed, share, cfg.win_rate, len(pairs), detail)


def ceiling(rules: Sequence[RuleScores], cfg: GateConfig = GateConfig()) -> Gate:
    """(d): paired over rules where both scores exist; a non-finite score counts 0 (a failed explanation)."""
    question = "(d) does the true rule score at least as high as the teacher and the top-tokens heuristic?"
    diffs = {}
    for name in ("teacher", "top_tokens"):
        pairs = [(r.true, getattr(r, name)) for r in rules if getattr(r, name) is not None]
        if pairs:
            diffs[name] = statistics.fmean((t if _ok(t) else 0.0) - (o if _ok(o) else 0.0) for t, o in pairs)
    if not diffs:
        return Gate("ceiling", question, None, None, -cfg.ceiling_margin, 0, "no teacher or top-tokens score")
    worst = min(diffs.values())
    detail = "; ".join(f"true minus {k.replace('_', '-')} {v:+.3f}" for k, v in diffs.items())
    n = sum(1 for r in rules if r.teacher is not None or r.top_tokens is not None)
    return Gate("ceiling", question, worst >= -cfg.ceiling_margin, worst, -cfg.ceiling_margin, n, detail)


def all_gates(rules: Sequence[RuleScores], cfg: GateConfig = GateConfig()) -> list[Gate]:
    return [gate(rules, cfg) for gate in (near_miss, unseen_families, paraphrases, ceiling)]


def verdict(gates: Sequence[Gate]) -> str:
    """The sentence the report opens with: which gates failed or were not measured, else that all passed."""
    failed = [g for g in gates if g.passed is False]
    unmeasured = [g for g in gates if g.passed is None]
    if failed:
        names = "; ".join(f"{g.question} NO — {g.detail}" for g in failed)
        return (
            f"**The judge FAILED {len(failed)} of {len(gates)} validity gates**: {names}. "
            "Read every score below with that in mind."
        )
    if unmeasured:
        return (
            f"The judge passed {len(gates) - len(unmeasured)} validity gates; not measured: "
            f"{', '.join(g.name for g in unmeasured)}."
        )
    every = f"all {len(gates)} validity gates" if len(gates) > 1 else "its one validity gate"
    return f"The judge passed {every} ({', '.join(g.name for g in gates)})."


def to_dicts(gates: Sequence[Gate]) -> list[dict]:
    return [asdict(g) for g in gates]
