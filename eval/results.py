"""The eval's records and `results.json`: what every explainer wrote for every feature, its scores,
and the statistics over features.

results.json (strict JSON: an undefined score, NaN in memory, is written as null)
  schema_version  1
  config          the EvalConfig fields, plus selection_split ("score") and report_split ("test")
  provenance      store, subject model, held-out file, datasets folder(s) checked, teacher source and
                  the simulator its candidates were selected with, eval simulator, prompt style/version
  explainers      [{name, label, kind (teacher|student|baseline), samples_per_feature, selection}] in
                  report order; names: teacher, student_best_of_k, student_best_of_1,
                  baseline_top_tokens, baseline_random_feature
  features        one object per held-out feature:
                    feature, kind, layer, index, polarity,
                    exemplars  [{window_id, source, tokens, activations}] the report-split exemplars
                               every explainer was scored on (top, quantile, random),
                    results    {explainer name: {explanation (an Explanation record), score (pooled
                               Pearson r on the report split), random_only_score, detection,
                               fuzzing, n_parse_failures, selection_score (on the selection split;
                               null when nothing was selected), candidates [{text, sample_index,
                               ok, error, selection_score}], predicted (per exemplar, aligned with
                               `exemplars`: the simulator's per-token values, null where none)}}
  summary         {explainer name: {n, n_missing, mean, median (Intervals: estimate, low, high, n,
                  n_missing, confidence), vs_teacher {difference (Interval of explainer minus
                  teacher over paired features), wins, losses, ties, win_rate (Interval)} or null,
                  by_layer {layer: Interval of the mean}, detection, fuzzing (Intervals or null)}}
  cost            {explainer name: {samples_per_feature, features, fresh_calls, cached_calls,
                  tokens_in_per_explanation, tokens_out_per_explanation, usd_per_explanation (null:
                  unpriced), latency_s_per_explanation (null: everything came from the cache),
                  source}}
  usage           {stage: cache Usage of this run}; timings {stage: seconds}

Why two splits: best-of-k picks its winner by score on `score`; reporting that same number would
favour best-of-k (the max of k noisy scores is biased upward), so the winner is re-scored on
`test`, which no selection ever looked at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from neuroscribe.records import Exemplar, FeatureExemplars, ScoredExplanation, to_json
from neuroscribe.runs.eval import SCHEMA_VERSION  # noqa: F401  (the version this module's schema is)

from .stats import Interval, bootstrap_ci, paired_difference, win_rate

SELECTION_SPLIT = "score"
REPORT_SPLIT = "test"
SCORED_SOURCES = ("top", "quantile", "random")  # what simulate_and_score simulates
REFERENCE = "teacher"


@dataclass(frozen=True)
class Explainer:
    name: str
    label: str
    kind: str  # teacher | student | baseline
    samples_per_feature: int
    selection: str  # how the reported explanation was chosen, in words


@dataclass(frozen=True)
class Outcome:
    """One explainer's reported explanation for one feature."""

    reported: ScoredExplanation  # scored on the report split
    selection_score: float = math.nan
    candidates: tuple[ScoredExplanation, ...] = ()  # scored on the selection split
    detection: float = math.nan
    fuzzing: float = math.nan


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


def scored_exemplars(record: FeatureExemplars, split: str = REPORT_SPLIT) -> list[Exemplar]:
    return [e for e in record.select(split=split) if e.source in SCORED_SOURCES]


def _predicted(scored: ScoredExplanation, exemplars: Sequence[Exemplar]) -> list[list[float] | None]:
    by_window = {s.window_id: list(s.predicted) for s in scored.simulations}
    return [by_window.get(e.window_id) for e in exemplars]


def feature_entry(record: FeatureExemplars, outcomes: dict[str, Outcome]) -> dict:
    exemplars = scored_exemplars(record)
    f = record.feature
    results = {}
    for name, o in outcomes.items():
        r = o.reported
        results[name] = {
            "explanation": to_json(r.explanation),
            "score": r.score,
            "random_only_score": r.random_only_score,
            "detection": o.detection,
            "fuzzing": o.fuzzing,
            "n_parse_failures": r.n_parse_failures,
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
            "predicted": _predicted(r, exemplars),
        }
    return {
        "feature": f.key,
        "kind": f.kind,
        "layer": f.layer,
        "index": f.index,
        "polarity": f.polarity,
        "exemplars": [
            {"window_id": e.window_id, "source": e.source, "tokens": list(e.tokens), "activations": list(e.activations)}
            for e in exemplars
        ],
        "results": results,
    }


def _interval(i: Interval) -> dict:
    return asdict(i)


def scores_of(features: Sequence[dict], name: str, field_name: str = "score") -> list[float | None]:
    return [f["results"][name][field_name] if name in f["results"] else None for f in features]


def summarise(
    features: Sequence[dict], explainers: Sequence[Explainer], n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Statistics over features for every explainer (see the module doc for the fields)."""
    kw = dict(n_resamples=n_resamples, seed=seed)
    reference = scores_of(features, REFERENCE)
    layers = sorted({f["layer"] for f in features})
    out = {}
    for ex in explainers:
        scores = scores_of(features, ex.name)
        mean = bootstrap_ci(scores, "mean", **kw)
        entry: dict[str, Any] = {
            "n": mean.n,
            "n_missing": mean.n_missing,
            "mean": _interval(mean),
            "median": _interval(bootstrap_ci(scores, "median", **kw)),
            "vs_teacher": None,
        }
        if ex.name != REFERENCE and any(name == REFERENCE for name in (e.name for e in explainers)):
            wr = win_rate(scores, reference, **kw)
            entry["vs_teacher"] = {
                "difference": _interval(paired_difference(scores, reference, **kw)),
                "wins": wr.wins,
                "losses": wr.losses,
                "ties": wr.ties,
                "win_rate": _interval(wr.rate),
            }
        entry["by_layer"] = {
            str(layer): _interval(bootstrap_ci([s for s, f in zip(scores, features) if f["layer"] == layer], **kw))
            for layer in layers
        }
        for judge in ("detection", "fuzzing"):
            values = scores_of(features, ex.name, judge)
            entry[judge] = (
                _interval(bootstrap_ci(values, **kw))
                if any(v is not None and not math.isnan(v) for v in values)
                else None
            )
        out[ex.name] = entry
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_interval(i: dict | None, digits: int = 3) -> str:
    if not i or i.get("estimate") is None:
        return "n/a"
    return f"{fmt(i['estimate'], digits)} [{fmt(i['low'], digits)}, {fmt(i['high'], digits)}]"


def model_card_rows(results: dict) -> dict[str, dict[str, Any]]:
    """The eval table in the `{row: {metric: value}}` form `neuroscribe publish --eval-results` reads."""
    rows: dict[str, dict[str, Any]] = {}
    for ex in results["explainers"]:
        s = results["summary"][ex["name"]]
        vs = s["vs_teacher"]
        rows[ex["label"]] = {
            "features": s["n"],
            "mean score [95% CI]": fmt_interval(s["mean"]),
            "median [95% CI]": fmt_interval(s["median"]),
            "minus teacher [95% CI]": fmt_interval(vs["difference"]) if vs else "-",
            "win rate vs teacher": fmt(vs["win_rate"]["estimate"], 2) if vs else "-",
        }
    return rows
