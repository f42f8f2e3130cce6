"""The eval's records and the content of `results.json` (`runs.eval` reads and writes the file).

results.json (schema 2; strict JSON: an undefined score, NaN in memory, is written as null)
  config        the EvalConfig fields, plus selection_split and report_split (the store's second and
                third split: "score" and "test" by default, `records.SplitNames`), the scoring
                version (key `protocol`) and the failure score
  provenance    store (+ fingerprint), subject model, held-out file, dataset folders checked, student,
                base, teacher and the simulator that selected its candidates, the eval simulators (the
                first one selects the student's best-of-k and must be the teacher's), prompt version
  explainers    [{name, label, kind (teacher|student|base|reference|baseline), samples_per_feature,
                selection}] in report order
  features      one object per held-out feature: feature, kind, layer, index, polarity, `insufficient`
                (why the report split cannot be scored, "" when it can), `exemplars` (the report-split
                top, quantile and random exemplars every explainer was scored on), and `results`
                {explainer: {explanation, selection_score, candidates [{text, sample_index, ok, error,
                selection_score}], scores {simulator: {score, headline, status, reason, random_only_score,
                out_of_context_score (anthropic), selection_split_score (null when selection used that split),
                judges, n_top, n_random, n_parse_failures, in_sample, predicted (per exemplar: the per-token
                values, null if none)}}}}
  summary       {simulator: {explainer: {n, n_failed, failure_rate, n_unparsed, parse_failure_rate,
                n_insufficient, mean, mean_failure_as_null, median (Intervals of the headline value),
                vs_teacher {difference, wins, losses, ties, win_rate} or null,
                by_group {group: Interval}, judges {name: Interval}}}}
  comparisons   {simulator: {name: {a, b, what, difference (Interval of a - b, paired by feature), wins,
                losses, ties, win_rate}}} and `gap_closed` (Interval) where the rows exist
  seeded        {simulator: {name: {a [rows], b [rows], what, seeds, difference (Interval)}}}: with several
                student training seeds, each student-best-of-1 comparison with a hierarchical interval
                (seeds x clusters x features; a cluster is a unit or a planted rule family)
  reliability   {simulator: {pooled: Interval of the split-half r over every unselected row, each row's scores
                centred on its own means first (between-row differences would inflate it), by_explainer
                {name: Interval}}}
  gates         {simulator: [Gate]} the validity gates of `eval.gates` ((a)-(c) from the calibration,
                (d) from the planted features' rows), when the eval has planted features or a calibration
  cost, usage, timings, and (optional) calibration, training

Conventions. The headline value of a (feature, explainer, simulator) is `scorers.headline`: the score,
0.0 for an unparsed explanation or a constant simulation (counted in n_failed), None for a feature whose
report split is insufficient (left out of every explainer alike, counted in n_insufficient), so paired
comparisons always cover the same features. 0.0 puts a failure below an anti-correlated explanation, so
the summary also reports `mean_failure_as_null`: the same mean with each failure counted as that
feature's null-explanation score (`failure_as_null`). Why two splits: best-of-k picks its winner on `score`;
reporting that same number would favour best-of-k (the max of k noisy scores is biased upward), so the
winner is re-scored on `test`, which no selection ever looked at. Split-half reliability correlates,
across features, the `score`-split and `test`-split scores of explanations that no selection touched
(best-of-1, base, reference, baselines): how far a per-feature score is noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from neuroscribe import scorers
from neuroscribe.distill.planted.features import FAMILIES
from neuroscribe.records import Exemplar, FeatureExemplars, ScoredExplanation, to_json
from neuroscribe.runs.eval import EvalResults, Explainer, FeatureRow, value_of
from neuroscribe.scorers import headline

from .stats import bootstrap_ci, clustered_difference, correlation, gap_closed, paired_difference, win_rate

UNSELECTED_KINDS = ("base", "control", "reference", "baseline")  # kinds whose explanation no score selected

# The explainer rows' names (results.json `explainers`, `features[].results`, `summary`, `cost`): here only.
TEACHER = "teacher"  # the teacher's best-of-k
TEACHER_BEST_OF_1 = "teacher_best_of_1"
STUDENT_BEST_OF_K = "student_best_of_k"
STUDENT_BEST_OF_1 = "student_best_of_1"
BASE_BEST_OF_1 = "base_best_of_1"
CONTROL_BEST_OF_1 = "control_best_of_1"
REFERENCE_ROW = "reference"  # known-true explanations (planted rules)
TOP_TOKENS = "baseline_top_tokens"
RANDOM_FEATURE = "baseline_random_feature"
NULL = "baseline_null"
REFERENCE = TEACHER  # what `vs_teacher` compares every row with
DISTILLATION_GAIN = "distillation_gain"  # the default primary comparison (`EvalConfig.primary`)


def seed_row(stem: str, i: int) -> str:
    """A further training seed's greedy row: `student_best_of_1_s1`, `control_best_of_1_s2`, ..."""
    return f"{stem}_s{i}"


@dataclass(frozen=True)
class Outcome:
    """One explainer's reported explanation for one feature, scored by every eval simulator."""

    reported: dict[str, ScoredExplanation]  # simulator spec -> on the report split
    selection_score: float = math.nan
    candidates: tuple[ScoredExplanation, ...] = ()  # scored on the selection split (primary simulator)
    on_selection_split: dict[str, ScoredExplanation] = field(default_factory=dict)  # unselected explainers only


@dataclass(frozen=True)
class Cost:
    samples_per_feature: int
    features: int
    fresh_calls: int = 0
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float | None = 0.0  # None: some call had no price
    seconds: float | None = None  # wall time of the fresh work; None when nothing ran fresh
    source: str = "measured"

    def per_explanation(self) -> dict:
        n = max(self.features, 1)
        return {
            "samples_per_feature": self.samples_per_feature,
            "features": self.features,
            "fresh_calls": self.fresh_calls,
            "cached_calls": self.cached_calls,
            "tokens_in_per_explanation": self.tokens_in / n,
            "tokens_out_per_explanation": self.tokens_out / n,
            "usd_per_explanation": None if self.usd is None else self.usd / n,
            "latency_s_per_explanation": None if self.seconds is None else self.seconds / n,
            "source": self.source,
        }


def _predicted(scored: ScoredExplanation, exemplars: Sequence[Exemplar]) -> list[list[float] | None]:
    by_window = {(s.window_id, s.source): list(s.predicted) for s in scored.simulations}
    return [by_window.get((e.window_id, e.source)) for e in exemplars]


def _score_entry(r: ScoredExplanation, selection: ScoredExplanation | None, exemplars) -> dict:
    return {
        "score": r.score,
        "headline": headline(r),
        "status": r.status,
        "reason": r.reason,
        "random_only_score": r.random_only_score,
        "out_of_context_score": r.out_of_context_score,
        "judges": r.judges,
        "n_top": r.n_top,
        "n_random": r.n_random,
        "n_parse_failures": r.n_parse_failures,
        "in_sample": r.in_sample,
        "selection_split_score": None if selection is None else selection.score,
        "predicted": _predicted(r, exemplars),
    }


def feature_entry(record: FeatureExemplars, outcomes: dict[str, Outcome], insufficient: str, split: str) -> dict:
    """One feature of results.json; its shown exemplars are those `split` (the report split) scores."""
    exemplars = scorers.scored_exemplars(record, split)
    f = record.feature
    results = {}
    for name, o in outcomes.items():
        first = next(iter(o.reported.values()))
        results[name] = {
            "explanation": to_json(first.explanation),
            "selection_score": o.selection_score,
            "candidates": [
                {
                    "text": c.explanation.text,
                    "sample_index": c.explanation.sample_index,
                    "ok": c.explanation.ok,
                    "error": c.explanation.error,
                    "selection_score": c.score,
                }
                for c in o.candidates
            ],
            "scores": {
                spec: _score_entry(r, o.on_selection_split.get(spec), exemplars) for spec, r in o.reported.items()
            },
        }
    return {
        "feature": f.key,
        "kind": f.kind,
        "layer": f.layer,
        "index": f.index,
        "polarity": f.polarity,
        "insufficient": insufficient,
        "exemplars": [
            {"window_id": e.window_id, "source": e.source, "tokens": list(e.tokens), "activations": list(e.activations)}
            for e in exemplars
        ],
        "results": results,
    }


def values_of(features: Sequence[dict], name: str, simulator: str, key: str = "headline") -> list[float | None]:
    """One value per feature entry (None where the explainer or the value is missing)."""
    return [value_of(f, name, simulator, key) for f in features]


def failure_as_null(features: Sequence[dict], name: str, simulator: str) -> list[float | None]:
    """The headline values with each failure ("unparsed", "undefined") counted as the feature's null
    explanation's score instead of 0.0 (0.0 where the null's own score is undefined, as the prompted
    simulator's constant prediction is): a failed explanation then says as little as the empty one, not
    less than an anti-correlated one would."""
    values = values_of(features, name, simulator)
    statuses = values_of(features, name, simulator, "status")
    null = values_of(features, NULL, simulator, "score")
    out = []
    for v, status, n in zip(values, statuses, null):
        failed = status in ("unparsed", "undefined")
        out.append((n if n is not None and math.isfinite(n) else scorers.FAILURE_SCORE) if failed else v)
    return out


def _judge_values(features: Sequence[dict], name: str, simulator: str) -> dict[str, list]:
    judged: dict[str, list] = {}
    for f in features:
        r = f["results"].get(name)
        for judge, v in ((r or {}).get("scores", {}).get(simulator, {}).get("judges") or {}).items():
            if judge not in scorers.JUDGE_SETTINGS:  # a label threshold, not a score to average
                judged.setdefault(judge, []).append(v)
    return judged


def _pair(a: list, b: list, **kw) -> dict:
    wr = win_rate(a, b, **kw)
    return {
        "difference": asdict(paired_difference(a, b, **kw)),
        "wins": wr.wins,
        "losses": wr.losses,
        "ties": wr.ties,
        "win_rate": asdict(wr.rate),
    }


def summarise(
    features: Sequence[dict], explainers: Sequence[Explainer], simulator: str, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Per explainer, statistics of the headline value over features (module doc) for one simulator."""
    kw = dict(n_resamples=n_resamples, seed=seed)
    names = [e.name for e in explainers]
    reference = values_of(features, REFERENCE, simulator)
    groups, group = feature_groups(features), [group_of(f) for f in features]
    out = {}
    for ex in explainers:
        values = values_of(features, ex.name, simulator)
        statuses = values_of(features, ex.name, simulator, "status")
        n_insufficient = sum(s == "insufficient" for s in statuses)
        n_failed = sum(s in ("unparsed", "undefined") for s in statuses)
        n_unparsed = sum(s == "unparsed" for s in statuses)
        scored = len(values) - n_insufficient
        entry: dict[str, Any] = {
            "n": sum(v is not None for v in values),
            "n_failed": n_failed,
            "n_unparsed": n_unparsed,  # explanations the parser refused (a subset of n_failed)
            "parse_failure_rate": n_unparsed / scored if scored else None,
            "n_insufficient": n_insufficient,
            "failure_rate": n_failed / scored if scored else None,
            "mean": asdict(bootstrap_ci(values, "mean", **kw)),
            "mean_failure_as_null": asdict(bootstrap_ci(failure_as_null(features, ex.name, simulator), "mean", **kw)),
            "median": asdict(bootstrap_ci(values, "median", **kw)),
            "vs_teacher": _pair(values, reference, **kw) if ex.name != REFERENCE and REFERENCE in names else None,
            "by_group": {g: asdict(bootstrap_ci([v for v, h in zip(values, group) if h == g], **kw)) for g in groups},
            "judges": {
                judge: asdict(bootstrap_ci(v, **kw)) for judge, v in _judge_values(features, ex.name, simulator).items()
            },
        }
        out[ex.name] = entry
    return out


# What the headline comparisons mean: (name, a, b, in words)
COMPARISONS = (
    (DISTILLATION_GAIN, STUDENT_BEST_OF_1, BASE_BEST_OF_1, "student best-of-1 minus its base model's best-of-1"),
    (
        "student_vs_format_control",
        STUDENT_BEST_OF_1,
        CONTROL_BEST_OF_1,
        "student best-of-1 minus the format-control student's (the same winners shuffled across features)",
    ),
    ("student_vs_top_tokens", STUDENT_BEST_OF_1, TOP_TOKENS, "student best-of-1 minus the top tokens"),
    ("student_vs_teacher_best_of_1", STUDENT_BEST_OF_1, TEACHER_BEST_OF_1, "student best-of-1 minus teacher best-of-1"),
    ("student_vs_teacher_best_of_k", STUDENT_BEST_OF_1, TEACHER, "student best-of-1 minus teacher best-of-k"),
    ("student_k_vs_teacher_k", STUDENT_BEST_OF_K, TEACHER, "student best-of-k minus teacher best-of-k"),
    ("teacher_vs_null", TEACHER, NULL, "teacher best-of-k minus the null explanation"),
    ("oracle_vs_null", REFERENCE_ROW, NULL, "reference (true) explanation minus the null explanation"),
)


def comparisons(
    features: Sequence[dict], explainers: Sequence[Explainer], simulator: str, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """The paired headline comparisons (COMPARISONS) that this eval's rows allow, and the share of the
    base-to-teacher-best-of-k gap that the student's best-of-1 closes."""
    kw = dict(n_resamples=n_resamples, seed=seed)
    names = {e.name for e in explainers}
    out: dict[str, Any] = {}
    for name, a, b, what in COMPARISONS:
        if a in names and b in names:
            out[name] = {
                "a": a,
                "b": b,
                "what": what,
                **_pair(values_of(features, a, simulator), values_of(features, b, simulator), **kw),
            }
    if {STUDENT_BEST_OF_1, BASE_BEST_OF_1, TEACHER} <= names:
        out["gap_closed"] = {
            "what": "(student best-of-1 - base best-of-1) / (teacher best-of-k - base best-of-1)",
            "interval": asdict(
                gap_closed(
                    values_of(features, STUDENT_BEST_OF_1, simulator),
                    values_of(features, BASE_BEST_OF_1, simulator),
                    values_of(features, TEACHER, simulator),
                    **kw,
                )
            ),
        }
    return out


def _kind_layer(feature: dict | FeatureRow) -> tuple[str, int]:
    return (feature.kind, feature.layer) if isinstance(feature, FeatureRow) else (feature["kind"], feature["layer"])


def group_of(feature: dict | FeatureRow) -> str:
    """A feature's row in the by-group table: its kind and layer, or a planted feature's rule family (the
    layer index names it), so planted family 6 and MLP layer 6 never share a row."""
    kind, layer = _kind_layer(feature)
    if kind == "planted":
        return f"planted: {FAMILIES[layer]}" if 0 < layer < len(FAMILIES) else f"planted L{layer}"
    return f"{kind} L{layer}"


def feature_groups(features: Sequence[dict] | Sequence[FeatureRow]) -> list[str]:
    """The groups present, real units first by layer, then planted families in the suite's order."""
    ordered = sorted(features, key=lambda f: (_kind_layer(f)[0] == "planted", *_kind_layer(f)))
    return list(dict.fromkeys(map(group_of, ordered)))


def cluster_of(feature: dict) -> str:
    """The cluster a feature is resampled with: its unit (both polarities of a neuron or latent) or, for
    a planted feature, its rule family (the layer index names the family)."""
    if feature["kind"] == "planted":
        return f"planted family {feature['layer']}"
    return f"{feature['kind']}/L{feature['layer']}/{feature['index']}"


def _seed_rows(explainers: Sequence[Explainer], stem: str) -> list[str]:
    names = [e.name for e in explainers]
    return [n for n in names if n == stem or n.startswith(f"{stem}_s")]


def seeded_comparisons(
    features: Sequence[dict], explainers: Sequence[Explainer], simulator: str, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Where the student was trained with several seeds (rows student_best_of_1, student_best_of_1_s1, ...):
    every comparison of `student best-of-1` with a hierarchical interval (`stats.clustered_difference`:
    seeds, then clusters, then features). A control with as many seeds pairs seed by seed; a single
    other side (base, teacher, one control) is the same for every seed. {} with one seed."""
    students = _seed_rows(explainers, STUDENT_BEST_OF_1)
    if len(students) < 2:
        return {}
    clusters = [cluster_of(f) for f in features]
    out = {}
    for name, a, b, what in COMPARISONS:
        if a != STUDENT_BEST_OF_1:
            continue
        others = _seed_rows(explainers, b)
        if not others:
            continue
        bs = others if len(others) == len(students) else [others[0]] * len(students)
        xs = [values_of(features, s, simulator) for s in students]
        ys = [values_of(features, o, simulator) for o in bs]
        interval = clustered_difference(xs, ys, clusters, n_resamples=n_resamples, seed=seed)
        out[name] = {"a": students, "b": bs, "what": what, "seeds": len(students), "difference": asdict(interval)}
    return out


def by_kind(
    features: Sequence[dict], explainers: Sequence[Explainer], simulator: str, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Per feature kind (e.g. planted vs mlp) when the eval mixes kinds: every explainer's mean (with its
    bootstrap CI) and the headline comparisons on that kind's features alone; empty for one kind."""
    kinds = sorted({f["kind"] for f in features})
    if len(kinds) < 2:
        return {}
    kw = dict(n_resamples=n_resamples, seed=seed)
    out = {}
    for kind in kinds:
        sub = [f for f in features if f["kind"] == kind]
        out[kind] = {
            "n_features": len(sub),
            "mean": {e.name: asdict(bootstrap_ci(values_of(sub, e.name, simulator), "mean", **kw)) for e in explainers},
            "comparisons": comparisons(sub, explainers, simulator, **kw),
        }
    return out


def reliability(
    features: Sequence[dict], explainers: Sequence[Explainer], simulator: str, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Split-half reliability: r across features between the selection-split and report-split scores of
    explanations no selection chose, per explainer and pooled over them (module doc)."""
    kw = dict(n_resamples=n_resamples, seed=seed)
    by_explainer, xs, ys = {}, [], []
    for ex in explainers:
        if ex.selected:
            continue
        x = values_of(features, ex.name, simulator, "selection_split_score")
        y = values_of(features, ex.name, simulator, "score")
        if any(v is not None for v in x):
            by_explainer[ex.name] = asdict(correlation(x, y, **kw))
            cx, cy = _centred_pairs(x, y)
            xs += cx
            ys += cy
    return {"pooled": asdict(correlation(xs, ys, **kw)), "by_explainer": by_explainer}


def _centred_pairs(x: list, y: list) -> tuple[list, list]:
    """Both halves minus their means over the pairs where both are finite (other pairs become None)."""
    pairs = [(a, b) for a, b in zip(x, y) if _ok(a) and _ok(b)]
    if not pairs:
        return [None] * len(x), [None] * len(y)
    mx, my = (sum(v) / len(pairs) for v in zip(*pairs))
    both = [_ok(a) and _ok(b) for a, b in zip(x, y)]
    return [a - mx if k else None for a, k in zip(x, both)], [b - my if k else None for b, k in zip(y, both)]


def _ok(v) -> bool:
    return v is not None and math.isfinite(v)


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_interval(i: dict | None, digits: int = 3) -> str:
    if not i or i.get("estimate") is None:
        return "n/a"
    return f"{fmt(i['estimate'], digits)} [{fmt(i['low'], digits)}, {fmt(i['high'], digits)}]"


def model_card_rows(results: EvalResults, simulator: str | None = None) -> dict[str, dict[str, Any]]:
    """The eval table in the `{row: {metric: value}}` form `neuroscribe publish --eval-results` reads
    (primary simulator unless another is named)."""
    summary = results.summary(simulator or results.primary_simulator)
    rows: dict[str, dict[str, Any]] = {}
    for ex in results.explainers:
        s = summary[ex.name]
        vs = s.vs_teacher
        rows[ex.label] = {
            "features": s.n,
            "mean score [95% CI]": fmt_interval(s.mean),
            "failed": f"{s.n_failed} ({fmt(s.failure_rate, 2)})",
            "minus teacher [95% CI]": fmt_interval(vs["difference"]) if vs else "-",
            "win rate vs teacher": fmt(vs["win_rate"]["estimate"], 2) if vs else "-",
        }
    return rows
