"""The eval folder: written by `neuroscribe eval`, read back by `rebuild_report` and `publish`.

  results.json     every explainer's explanation and score per held-out feature, and the statistics
                   (schema: `neuroscribe.eval.results`); strict JSON, an undefined score is null
  eval_table.md / eval_table.json   the table `publish --eval-results` puts in a model card
  report.md, plots/*.png, browser.html   the human-readable report

`EvalResults` is results.json in memory: the validated content (`data`, written back unchanged, so a
round trip is byte-identical) behind typed accessors; the report, plots and browser read it through
those alone. The nested parts they read are small frozen records (`FeatureRow`, `RowSummary`,
`Comparison`, ...); an interval stays the dict form of `eval.stats.Interval`
({estimate, low, high, n, n_missing, confidence}).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from neuroscribe.runs.files import RunFileError, field, read_json, write_json, write_text

RESULTS, TABLE_MD, TABLE_JSON, REPORT, BROWSER = (
    "results.json",
    "eval_table.md",
    "eval_table.json",
    "report.md",
    "browser.html",
)
SCHEMA_VERSION = 2
REQUIRED = (("explainers", list), ("features", list), ("summary", dict))
DEFAULT_PRIMARY = "distillation_gain"  # EvalConfig.primary's default: results written before it existed

Interval = Mapping[str, Any]  # eval.stats.Interval as written: {estimate, low, high, n, n_missing, confidence}


# ---------------------------------------------------------------------------------- nested parts


@dataclass(frozen=True)
class Explainer:
    """One row of the eval (results.json `explainers`)."""

    name: str
    label: str
    kind: str  # teacher | student | base | control | reference | baseline
    samples_per_feature: int
    selection: str  # how the reported explanation was chosen, in words

    @property
    def selected(self) -> bool:
        """Whether a selection-split score chose this explainer's explanation (best-of-k)."""
        return self.selection.startswith("best on")


@dataclass(frozen=True)
class ShownExemplar:
    """A report-split exemplar every explainer of a feature was scored on."""

    window_id: int
    source: str
    tokens: tuple[str, ...]
    activations: tuple[float, ...]


def value_of(entry: Mapping, name: str, simulator: str, key: str = "headline") -> Any:
    """One feature entry's `key` for explainer `name` scored by `simulator` (None where either is missing)."""
    r = entry["results"].get(name)
    return None if r is None or simulator not in r["scores"] else r["scores"][simulator].get(key)


@dataclass(frozen=True)
class RowResult:
    """One explainer's reported explanation of one feature, with its scores per simulator."""

    explanation: Mapping[str, Any]  # records.Explanation as JSON
    selection_score: float | None
    candidates: tuple[Mapping[str, Any], ...]
    scores: Mapping[str, Mapping[str, Any]]  # simulator -> {score, headline, status, predicted, ...}
    intervention: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, d: Mapping) -> RowResult:
        return cls(
            d["explanation"],
            d.get("selection_score"),
            tuple(d.get("candidates", ())),
            d.get("scores", {}),
            d.get("intervention"),
        )

    @property
    def text(self) -> str:
        return self.explanation["text"]

    @property
    def ok(self) -> bool:
        return self.explanation.get("ok", True)

    @property
    def error(self) -> str:
        return self.explanation.get("error", "")

    def score(self, simulator: str) -> float | None:
        return self.scores[simulator]["score"]

    def predicted(self, simulator: str) -> list[list[float | None] | None]:
        """Per exemplar, the simulated per-token values (None: not simulated)."""
        return self.scores[simulator]["predicted"]


@dataclass(frozen=True)
class FeatureRow:
    """One held-out feature: what it is, its report-split exemplars and every explainer's result."""

    key: str
    kind: str
    layer: int
    index: int | None
    polarity: Any
    insufficient: str  # why the report split cannot be scored; "" when it can
    exemplars: tuple[ShownExemplar, ...]
    entry: Mapping[str, Any]  # the feature's object in results.json (what `value_of` reads)

    @classmethod
    def from_json(cls, d: Mapping) -> FeatureRow:
        shown = tuple(
            ShownExemplar(e["window_id"], e["source"], tuple(e["tokens"]), tuple(e["activations"]))
            for e in d.get("exemplars", ())
        )
        return cls(
            d.get("feature", ""),
            d["kind"],
            d["layer"],
            d.get("index"),
            d.get("polarity"),
            d.get("insufficient") or "",
            shown,
            d,
        )

    def has(self, name: str) -> bool:
        return name in self.entry["results"]

    def row(self, name: str) -> RowResult | None:
        r = self.entry["results"].get(name)
        return None if r is None else RowResult.from_json(r)

    def rows(self) -> dict[str, RowResult]:
        return {name: RowResult.from_json(r) for name, r in self.entry["results"].items()}

    def value(self, name: str, simulator: str, key: str = "headline") -> Any:
        return value_of(self.entry, name, simulator, key)


@dataclass(frozen=True)
class RowSummary:
    """One explainer's statistics over features for one simulator (results.json `summary`)."""

    n: int
    n_failed: int = 0
    n_unparsed: int = 0
    parse_failure_rate: float | None = None
    n_insufficient: int = 0
    failure_rate: float | None = None
    mean: Interval | None = None
    mean_failure_as_null: Interval | None = None
    median: Interval | None = None
    vs_teacher: Mapping[str, Any] | None = None  # {difference, wins, losses, ties, win_rate} or None
    by_group: Mapping[str, Interval] = dataclasses.field(default_factory=dict)
    judges: Mapping[str, Interval] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping) -> RowSummary:
        return cls(
            d.get("n", 0),
            d.get("n_failed", 0),
            d.get("n_unparsed", 0),
            d.get("parse_failure_rate"),
            d.get("n_insufficient", 0),
            d.get("failure_rate"),
            d.get("mean"),
            d.get("mean_failure_as_null"),
            d.get("median"),
            d.get("vs_teacher"),
            d.get("by_group") or {},
            d.get("judges") or {},
        )


@dataclass(frozen=True)
class Comparison:
    """A paired headline comparison, row a minus row b (results.json `comparisons`)."""

    name: str
    a: str
    b: str
    what: str
    difference: Interval
    wins: int
    losses: int
    ties: int
    win_rate: Interval

    @classmethod
    def from_json(cls, name: str, d: Mapping) -> Comparison:
        return cls(name, d["a"], d["b"], d["what"], d["difference"], d["wins"], d["losses"], d["ties"], d["win_rate"])


@dataclass(frozen=True)
class GapClosed:
    what: str
    interval: Interval


@dataclass(frozen=True)
class SeededComparison:
    """A student-best-of-1 comparison over several training seeds (results.json `seeded`)."""

    name: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    what: str
    seeds: int
    difference: Interval


@dataclass(frozen=True)
class Reliability:
    pooled: Interval
    by_explainer: Mapping[str, Interval]


@dataclass(frozen=True)
class KindPart:
    """One feature kind's means and comparisons (results.json `by_kind`)."""

    n_features: int
    mean: Mapping[str, Interval]
    comparisons: Mapping[str, Comparison]


@dataclass(frozen=True)
class RowCost:
    """Cost and latency per explanation of one explainer (`eval.results.Cost.per_explanation`)."""

    samples_per_feature: int
    features: int
    fresh_calls: int
    cached_calls: int
    tokens_in_per_explanation: float
    tokens_out_per_explanation: float
    usd_per_explanation: float | None
    latency_s_per_explanation: float | None
    source: str


@dataclass(frozen=True)
class SimulatorCalibration:
    """One simulator's calibration on planted rules (`eval.calibration.calibrate`)."""

    n_rules: int
    win_rate: float | None
    rank1: int
    mean_true: float | None
    mean_wrong: float | None
    rules: tuple[Mapping[str, Any], ...]  # {rule, feature, family, true_score, wrong_scores, ...}
    gates: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Calibration:
    split: str
    note: str
    simulators: Mapping[str, SimulatorCalibration]


def _comparisons(part: Mapping) -> dict[str, Comparison]:
    return {name: Comparison.from_json(name, c) for name, c in part.items() if name != "gap_closed"}


# ---------------------------------------------------------------------------------- the record


@dataclass(frozen=True, eq=False)
class EvalResults:
    """results.json in memory (module doc). `data` is the file's content as written; construct with
    `from_dict` (checked) or `EvalResults(data)` (unchecked: a partial record, e.g. in a test)."""

    data: Mapping[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path = RESULTS) -> EvalResults:
        """The checked record: schema version, the required fields, every explainer's fields."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise RunFileError(
                f"{where}: field schema_version is {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
            )
        for key, kind in REQUIRED:
            field(data, key, where, kind)
        for i, e in enumerate(data["explainers"]):
            for key in ("name", "label", "kind"):
                field(e, key, f"{where}: explainers[{i}]", str)
        for i, f in enumerate(data["features"]):
            for key in ("feature", "kind", "layer", "results"):
                field(f, key, f"{where}: features[{i}]")
        return cls(data)

    # ------------------------------------------------------------------ what was run

    @property
    def config(self) -> Mapping[str, Any]:
        """The EvalConfig fields as run, plus selection_split, report_split, protocol, sampling, failure_score."""
        return self.data.get("config", {})

    @property
    def provenance(self) -> Mapping[str, Any]:
        return self.data.get("provenance", {})

    @property
    def simulators(self) -> tuple[str, ...]:
        """The eval simulators; the first selects best-of-k and is the primary one."""
        return tuple(self.provenance.get("simulators", ()))

    @property
    def primary_simulator(self) -> str:
        return self.simulators[0]

    @property
    def judges(self) -> tuple[str, ...]:
        """The simulators after the primary one (second judges)."""
        return self.simulators[1:]

    @property
    def primary(self) -> str:
        """The primary comparison's name, declared before the eval ran."""
        return self.config.get("primary", DEFAULT_PRIMARY)

    def primary_comparison(self, simulator: str | None = None) -> Comparison | None:
        """The primary comparison as `simulator` (the primary one unless named) scored it; None when a row
        it needs was not evaluated."""
        return self.comparisons(simulator or self.primary_simulator).get(self.primary)

    @cached_property
    def explainers(self) -> tuple[Explainer, ...]:
        return tuple(
            Explainer(e["name"], e["label"], e["kind"], e.get("samples_per_feature", 0), e.get("selection", ""))
            for e in self.data.get("explainers", ())
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.explainers)

    @property
    def labels(self) -> dict[str, str]:
        return {e.name: e.label for e in self.explainers}

    # ------------------------------------------------------------------ per feature

    @cached_property
    def features(self) -> tuple[FeatureRow, ...]:
        return tuple(FeatureRow.from_json(f) for f in self.data.get("features", ()))

    def values(self, name: str, simulator: str, key: str = "headline") -> list[Any]:
        """One value per feature (None where the explainer or the value is missing)."""
        return [f.value(name, simulator, key) for f in self.features]

    # ------------------------------------------------------------------ statistics (per simulator)

    def summary(self, simulator: str) -> dict[str, RowSummary]:
        return {name: RowSummary.from_json(s) for name, s in self.data.get("summary", {}).get(simulator, {}).items()}

    def comparisons(self, simulator: str) -> dict[str, Comparison]:
        """The paired comparisons this eval's rows allow (`gap_closed` apart: `gap_closed`)."""
        return _comparisons(self.data.get("comparisons", {}).get(simulator, {}))

    def gap_closed(self, simulator: str) -> GapClosed | None:
        g = self.data.get("comparisons", {}).get(simulator, {}).get("gap_closed")
        return None if g is None else GapClosed(g["what"], g["interval"])

    def seeded(self, simulator: str) -> dict[str, SeededComparison]:
        return {
            name: SeededComparison(name, tuple(s["a"]), tuple(s["b"]), s["what"], s["seeds"], s["difference"])
            for name, s in self.data.get("seeded", {}).get(simulator, {}).items()
        }

    def reliability(self) -> dict[str, Reliability]:
        """Split-half reliability per simulator."""
        return {
            sim: Reliability(r["pooled"], r.get("by_explainer", {}))
            for sim, r in self.data.get("reliability", {}).items()
        }

    def by_kind(self, simulator: str) -> dict[str, KindPart]:
        """Per feature kind when the eval mixes kinds ({} for one kind)."""
        return {
            kind: KindPart(p["n_features"], p["mean"], _comparisons(p["comparisons"]))
            for kind, p in self.data.get("by_kind", {}).get(simulator, {}).items()
        }

    def by_group(self, simulator: str, name: str) -> Mapping[str, Interval]:
        """One explainer's mean per layer or planted family."""
        s = self.summary(simulator).get(name)
        return s.by_group if s else {}

    def gates(self) -> dict[str, list[Mapping[str, Any]]]:
        """Per simulator, the validity gates (`eval.gates.Gate` as dicts); {} when none were computed."""
        return dict(self.data.get("gates", {}))

    # ------------------------------------------------------------------ cost, usage, extras

    def cost(self, name: str) -> RowCost:
        c = self.data["cost"][name]
        return RowCost(**{k: c[k] for k in RowCost.__dataclass_fields__})

    @property
    def usage(self) -> Mapping[str, Mapping[str, Any]]:
        return self.data.get("usage", {})

    @property
    def training(self) -> Mapping[str, list | None]:
        """Training loss per logged step ([[step, loss], ...]) per run folder."""
        return self.data.get("training", {})

    @property
    def calibration(self) -> Calibration | None:
        cal = self.data.get("calibration")
        if not cal:
            return None
        sims = {
            sim: SimulatorCalibration(
                c["n_rules"],
                c["win_rate"],
                c["rank1"],
                c["mean_true"],
                c["mean_wrong"],
                tuple(c.get("rules", ())),
                tuple(c.get("gates", ())),
            )
            for sim, c in cal.get("simulators", {}).items()
        }
        return Calibration(cal.get("split", ""), cal.get("note", ""), sims)

    @property
    def intervention(self) -> Mapping[str, Mapping[str, Any]] | None:
        """Per explainer, the mean intervention scores (`--intervention`), else None."""
        return self.data.get("intervention")


# ---------------------------------------------------------------------------------- the files


def write_results(folder: str | Path, results: EvalResults) -> Path:
    return write_json(Path(folder) / RESULTS, results.data)


def read_results(path: str | Path) -> EvalResults:
    """results.json (or the folder holding it), checked for its schema version and required fields."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    return EvalResults.from_dict(read_json(path, "no eval results: run `neuroscribe eval` first"), path)


def write_eval_table(folder: str | Path, table_md: str, rows: Mapping[str, Mapping[str, Any]]) -> tuple[Path, Path]:
    """eval_table.md (the markdown) and eval_table.json (the `{row: {metric: value}}` rows)."""
    folder = Path(folder)
    return write_text(folder / TABLE_MD, table_md), write_text(folder / TABLE_JSON, json.dumps(rows, indent=2))


def write_report_md(folder: str | Path, text: str) -> Path:
    return write_text(Path(folder) / REPORT, text)


def write_browser_html(folder: str | Path, page: str) -> Path:
    return write_text(Path(folder) / BROWSER, page)
