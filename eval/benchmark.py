"""`neuroscribe eval`: student vs teacher vs baselines on held-out features, every row scored alike.

Rows (`explainers`): the teacher (best-of-k from its explain run, or explained afresh) and its best-of-1;
the student's best-of-k and greedy best-of-1; the student's base model before training (greedy
best-of-1) when `base` is given; reference explanations (planted truths) when given; and the
baselines (peak tokens, another feature's explanation, the null explanation). Best-of-k winners are
picked on the store's selection split (`score` by default) by the first simulator and every row is
reported on its report split (`test`), which no selection saw, by every simulator (one table each).
Conventions: `eval.results` and `neuroscribe.scorers`. Everything goes through the sqlite cache, so a
rerun generates and simulates nothing twice.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from neuroscribe.backends import SamplingParams
from neuroscribe.cache import Cache, cache_key
from neuroscribe.configs import EvalConfig
from neuroscribe.interventions import InterventionScore, InterventionScorer, mean_of
from neuroscribe.options import to_dict
from neuroscribe.progress import progress
from neuroscribe.prompts import PROMPT_VERSION
from neuroscribe.records import Explanation, FeatureExemplars, ScoredExplanation, SplitNames
from neuroscribe.runs.datasets import heldout_file, read_build
from neuroscribe.runs.demo import read_calibration
from neuroscribe.runs.eval import RESULTS, SCHEMA_VERSION, EvalResults, read_results, write_results
from neuroscribe.runs.files import OutputLock, guard_output, refuse_existing, strict
from neuroscribe.runs.store import META as STORE_META
from neuroscribe.runs.store import ExemplarStore
from neuroscribe.runs.train import loss_curve, trained_on
from neuroscribe.scorers import (
    FAILURE_SCORE,
    SCORING_VERSION,
    cached_scores,
    in_sample_features,
    judge_scores,
    split_gap,
)
from neuroscribe.simulators import load_simulator
from neuroscribe.specs import Spec

from .calibration import validity_gates
from .explainers import (
    Samples,
    TeacherPick,
    backend_spec,
    best_or_first,
    explainer_backend,
    first_sample,
    null_explanation,
    random_other_explanation,
    reference_explanations,
    sample_explanations,
    teacher_from_results,
    top_tokens_explanation,
)
from .heldout import dataset_folders, heldout_features
from .report import write_report
from .results import (
    BASE_BEST_OF_1,
    CONTROL_BEST_OF_1,
    NULL,
    RANDOM_FEATURE,
    REFERENCE_ROW,
    STUDENT_BEST_OF_1,
    STUDENT_BEST_OF_K,
    TEACHER,
    TEACHER_BEST_OF_1,
    TOP_TOKENS,
    Cost,
    Explainer,
    Outcome,
    by_kind,
    comparisons,
    feature_entry,
    fmt,
    fmt_interval,
    reliability,
    seed_row,
    seeded_comparisons,
    summarise,
)

SEED_ROWS = {"student": STUDENT_BEST_OF_1, "control": CONTROL_BEST_OF_1}  # a further seed's side -> its row stem


def _seed_side_row(side: str) -> str:
    """The row of a further training seed's side (`student_s2` -> `student_best_of_1_s2`)."""
    kind, _, i = side.partition("_s")
    return seed_row(SEED_ROWS[kind], int(i))


@dataclass(frozen=True)
class EvalOutputs:
    out: Path
    results: EvalResults
    files: dict[str, Path]


# ------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Row:
    """One explainer's reported explanation of a feature, before scoring."""

    name: str
    chosen: Explanation
    selected: bool = False
    selection_score: float = math.nan
    candidates: tuple[ScoredExplanation, ...] = ()


def drawn(keys: list[str], n: int | None, seed: int, purpose: str) -> set[str] | None:
    """`n` of `keys` drawn with `seed` (None: all of them), the same for every explainer row."""
    if n is None or n >= len(keys):
        return None
    return set(random.Random(f"{seed}:{purpose}").sample(sorted(keys), n))


class Scorer:
    """Every eval simulator over one cache; the first (primary) one also selects best-of-k winners."""

    def __init__(
        self, simulators: list, cache: Cache, cfg: EvalConfig, in_sample: set[str], keys: list[str], splits: SplitNames
    ):
        if cfg.detection and not hasattr(simulators[0], "yes_probabilities"):
            raise ValueError(
                f"--detection needs a local simulator (hf:MODEL) first; {simulators[0].spec} cannot answer Yes/No"
            )
        self.simulators, self.cache, self.cfg, self.in_sample = simulators, cache, cfg, in_sample
        self.splits = splits  # the store's: selection scores on `select`, every reported number on `report`
        self.judged_keys = drawn(keys, cfg.judged_features, cfg.seed, "judged")
        self.split_half_keys = drawn(keys, cfg.reliability_features, cfg.seed, "split-half")
        self.seconds: dict[str, float] = {}  # report-split scoring per simulator, and the split-half re-scoring

    @property
    def primary(self):
        return self.simulators[0]

    def judged(self, row: str, feature: str) -> bool:
        """Whether the second and later simulators score this row of this feature (`judged_rows`,
        `judged_features`)."""
        return (not self.cfg.judged_rows or row in self.cfg.judged_rows) and (
            self.judged_keys is None or feature in self.judged_keys
        )

    def score_many(self, explanations, record: FeatureExemplars, split: str) -> list[ScoredExplanation]:
        """The primary simulator's scores of several explanations of one feature, simulated together."""
        return self._scores(self.primary, list(explanations), record, split)

    def _judges(self, explanation: Explanation, record: FeatureExemplars) -> dict:
        judge = self.primary
        key = cache_key(
            "judge",
            judge.spec,
            {
                "protocol": SCORING_VERSION,
                "target": self.cfg.target,
                "seed": self.cfg.seed,
                "explanation": explanation.text,
                "feature": record.feature.key,
                "split": self.splits.report,
                "exemplars": [e.window_id for e in record.select(self.splits.report)],
            },
        )
        hit = self.cache.get(key)
        if hit is not None:
            return {k: math.nan if v is None else v for k, v in hit.items()}
        value = judge_scores(judge, explanation, record, self.splits.report, self.cfg.seed, self.cfg.target)
        self.cache.put(
            key,
            {k: None if math.isnan(v) else v for k, v in value.items()},
            kind="judge",
            model=judge.spec,
            stage="eval-judge",
        )
        return value

    def _scores(self, sim, explanations: list[Explanation], record: FeatureExemplars, split: str) -> list:
        if not explanations:
            return []
        start = time.perf_counter()
        out = cached_scores(
            sim,
            explanations,
            record,
            split,
            self.cache,
            stage="eval-simulate",
            target=self.cfg.target,
            in_sample=record.feature.key in self.in_sample,
        )
        part = f"{sim.spec} on {split}"
        self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start
        return out

    def outcomes(self, record: FeatureExemplars, rows: list[Row]) -> dict[str, Outcome]:
        """Every row of one feature, scored on the report split by the primary simulator and by every
        judge that scores it; an unselected row also on the selection split by the primary one
        (split-half reliability); judges (primary simulator) with `detection`. Each simulator gets a
        feature's rows in one batched call."""
        key = record.feature.key
        reported: dict[str, dict] = {r.name: {} for r in rows}
        for sim in self.simulators:
            mine = [r for r in rows if sim is self.primary or self.judged(r.name, key)]
            for r, s in zip(mine, self._scores(sim, [r.chosen for r in mine], record, self.splits.report)):
                if self.cfg.detection and sim is self.primary and r.chosen.ok:
                    s = dataclasses.replace(s, judges=self._judges(r.chosen, record))
                reported[r.name][sim.spec] = s
        unselected = [
            r for r in rows if not r.selected and (self.split_half_keys is None or key in self.split_half_keys)
        ]
        other = dict(
            zip(
                (r.name for r in unselected),
                self._scores(self.primary, [r.chosen for r in unselected], record, self.splits.select),
            )
        )
        return {
            r.name: Outcome(
                reported[r.name],
                r.selection_score,
                r.candidates,
                {self.primary.spec: other[r.name]} if r.name in other else {},
            )
            for r in rows
        }


# ------------------------------------------------------------------------------ inputs


def _local_model(explainer: str) -> str | None:
    """The local model an explainer spec runs (hf:PATH), whose training data the leak check reads."""
    spec = Spec.parse(backend_spec(explainer))
    return spec.model if spec.kind == "hf" else None


def _report_splits(store: ExemplarStore) -> SplitNames:
    """The store's split names; refused when selection and report would share a split."""
    splits = store.split_names
    if not splits.distinct:
        raise ValueError(
            f"{store.path / STORE_META}: field mining.splits is {list(store.mining.get('splits', ()))}; eval needs "
            "three splits (explain, one that selects winners, one that reports), so no reported number was selected on"
        )
    return splits


def _records(store: ExemplarStore, keys: list[str], features_file: Path) -> dict[str, FeatureExemplars]:
    unknown = [k for k in keys if k not in set(store.keys(include_dead=True))]
    if unknown:
        raise KeyError(f"{features_file}: feature(s) {unknown[:5]} are not in the store {store.path}")
    return {k: store.get(k) for k in keys}


def _insufficient(record: FeatureExemplars, splits: SplitNames) -> str:
    return split_gap(record, splits.report)


def _prompt_settings(cfg: EvalConfig, features_file: Path) -> tuple[str, int | None]:
    """(prompt style, exemplars per prompt): as given, else what the training datasets were built with,
    so the student is asked in the format it was trained on."""
    build = read_build(cfg.datasets or features_file.parent)
    style = cfg.prompt_style or (build.explain_meta("prompt_style", "plain") if build else "plain")
    return style, cfg.max_exemplars or (build.setting("max_exemplars") if build else None)


def _check_teacher(pick: TeacherPick, store: ExemplarStore, primary: str) -> None:
    """The teacher's candidates must be about this store and selected by the eval's primary simulator."""
    prov = pick.provenance
    fp = prov.get("teacher_store_fingerprint")
    if fp and fp != store.fingerprint:
        raise ValueError(
            f"{prov['teacher_results']}/meta.json: field store_fingerprint is {fp} (store "
            f"{prov.get('teacher_store')}) but the eval store {store.path} is {store.fingerprint}; "
            "explain and eval must use the same store"
        )
    selected_by = prov.get("teacher_selection_simulator")
    if selected_by and selected_by != primary:
        raise ValueError(
            f"{prov['teacher_results']}/meta.json: field simulator is {selected_by!r} but the eval's "
            f"first --simulator is {primary!r}; the simulator that selects the student's best-of-k must "
            "be the teacher's (add others as further --simulator judges)"
        )


# ------------------------------------------------------------------------------ sides


@dataclass(frozen=True)
class _Side:
    """A model explainer's picks: feature -> (best-of-k winner, candidates on the selection split), and
    its best-of-1 explanation per feature."""

    picks: dict
    first: dict[str, Explanation]
    cost: Cost  # best-of-k: every sample plus the selection scoring
    first_cost: Cost | None
    provenance: dict = dataclasses.field(default_factory=dict)


def _best_of(samples: Samples, records, scorer: Scorer) -> dict:
    return {
        key: (best_or_first(scored), scored)
        for key, exps in samples.by_feature.items()
        if (scored := tuple(scorer.score_many(exps, records[key], scorer.splits.select)))
    }


def _sampled_side(
    spec: str, stage: str, records, cfg: EvalConfig, style: str, cache: Cache, scorer: Scorer, greedy_only: bool = False
) -> _Side:
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
    backend = explainer_backend(spec, cache, stage, cfg.dtype, cfg.limits)
    samples = sample_explanations(backend, records, cfg.k, params, style, cfg.max_exemplars, stage, greedy_only)
    start = time.perf_counter()
    picks = {} if greedy_only else _best_of(samples, records, scorer)
    seconds = samples.all_cost.seconds
    cost = dataclasses.replace(
        samples.all_cost, seconds=None if seconds is None else seconds + time.perf_counter() - start
    )
    return _Side(picks, samples.greedy, cost, samples.greedy_cost)


def _teacher_side(cfg: EvalConfig, pick: TeacherPick | None, keys, records, style, cache, scorer) -> tuple[_Side, dict]:
    """(the teacher's side, the pool of teacher explanations the random-feature baseline draws from)."""
    if pick is None:
        side = _sampled_side(cfg.teacher, "eval-teacher", records, cfg, style, cache, scorer)
        side = dataclasses.replace(
            side, provenance={"teacher": backend_spec(cfg.teacher), "teacher_selection_simulator": scorer.primary.spec}
        )
        return side, {key: winner.explanation for key, (winner, _) in side.picks.items()}
    picks = {key: (best_or_first(pick.candidates[key]), pick.candidates[key]) for key in keys}
    first = {key: first_sample(pick.candidates[key]).explanation for key in keys}
    pool = {key: best_or_first(c).explanation for key, c in pick.candidates.items()}  # every feature it explained
    return _Side(picks, first, pick.cost, None, pick.provenance), pool


def explainer_list(cfg: EvalConfig, teacher: _Side, splits: SplitNames) -> list[Explainer]:
    k_t = teacher.cost.samples_per_feature
    t_first = (
        f"sample 0 at temperature {teacher.provenance.get('teacher_temperature')}" if cfg.teacher_results else "greedy"
    )
    out = [
        Explainer(TEACHER, f"teacher best-of-{k_t}", "teacher", k_t, f"best on {splits.select}"),
        Explainer(TEACHER_BEST_OF_1, f"teacher best-of-1 ({t_first})", "teacher", 1, t_first),
    ]
    if cfg.k > 1:
        out.append(
            Explainer(STUDENT_BEST_OF_K, f"student best-of-{cfg.k}", "student", cfg.k, f"best on {splits.select}")
        )
    out.append(Explainer(STUDENT_BEST_OF_1, "student best-of-1 (greedy)", "student", 1, "greedy"))
    if cfg.base:
        out.append(Explainer(BASE_BEST_OF_1, "base model best-of-1 (greedy, before training)", "base", 1, "greedy"))
    for i, _ in enumerate(cfg.student_seeds, 1):
        label = f"student best-of-1 (greedy), seed run {i + 1}"
        out.append(Explainer(seed_row(STUDENT_BEST_OF_1, i), label, "student", 1, "greedy"))
    if cfg.control:
        label = "format-control student best-of-1 (greedy; winners shuffled across features)"
        out.append(Explainer(CONTROL_BEST_OF_1, label, "control", 1, "greedy"))
    for i, _ in enumerate(cfg.control_seeds, 1):
        label = f"format-control best-of-1, seed run {i + 1}"
        out.append(Explainer(seed_row(CONTROL_BEST_OF_1, i), label, "control", 1, "greedy"))
    if cfg.reference:
        out.append(Explainer(REFERENCE_ROW, f"reference: {cfg.reference_label}", "reference", 0, "given"))
    return out + [
        Explainer(TOP_TOKENS, "baseline: top tokens", "baseline", 0, "explain-split peak tokens"),
        Explainer(
            RANDOM_FEATURE, "baseline: random other feature", "baseline", 0, "teacher's explanation of another feature"
        ),
        Explainer(NULL, "baseline: null explanation", "baseline", 0, "the empty explanation"),
    ]


def _outcomes(
    record: FeatureExemplars, sides: dict[str, _Side], pool: dict, references: dict, scorer: Scorer, cfg: EvalConfig
) -> dict[str, Outcome]:
    """Every explainer's reported explanation for one feature, scored on the report split."""
    key = record.feature.key
    rows: list[Row] = []

    def add(name: str, chosen: Explanation, selected: bool = False, winner=None, cands=()):
        rows.append(Row(name, chosen, selected, winner.score if winner else math.nan, tuple(cands)))

    winner, cands = sides["teacher"].picks[key]
    add(TEACHER, winner.explanation, True, winner, cands)
    add(TEACHER_BEST_OF_1, sides["teacher"].first[key])
    if cfg.k > 1:
        winner, cands = sides["student"].picks[key]
        add(STUDENT_BEST_OF_K, winner.explanation, True, winner, cands)
    add(STUDENT_BEST_OF_1, sides["student"].first[key])
    if "base" in sides:
        add(BASE_BEST_OF_1, sides["base"].first[key])
    if "control" in sides:
        add(CONTROL_BEST_OF_1, sides["control"].first[key])
    for name, side in sides.items():  # further training seeds: greedy rows of their own
        if name.startswith(("student_s", "control_s")):
            add(_seed_side_row(name), side.first[key])
    if key in references:  # known-true explanations exist for planted features only
        add(REFERENCE_ROW, references[key])
    add(TOP_TOKENS, top_tokens_explanation(record))
    other = random_other_explanation(key, pool, cfg.seed)
    if other is not None:  # a single-feature eval has no other feature to borrow from
        add(RANDOM_FEATURE, other)
    add(NULL, null_explanation(key))
    return scorer.outcomes(record, rows)


def _loss_curves(cfg: EvalConfig) -> dict[str, list[list[float]]]:
    """Training loss per logged step of the student's run and of every run in `training_runs`."""
    runs = list(cfg.training_runs)
    if Path(cfg.student).is_dir() and cfg.student not in runs:
        runs.append(cfg.student)
    curves = {}
    for run in runs:
        curve = loss_curve(run)
        if curve is not None:  # None: the folder has no trainer_state.json
            curves[str(run)] = curve
    return curves


# ------------------------------------------------------------------------------ the run


def evaluate(cfg: EvalConfig, simulators: list | None = None) -> EvalOutputs:
    """Run the eval (module doc) and write its outputs; `simulators` overrides `cfg.simulators` (objects
    with `spec` and `simulate`, e.g. ones the caller already loaded)."""
    t0 = time.perf_counter()
    features_file = heldout_file(cfg.features)
    guard_output(
        cfg.out,
        {
            "--store": cfg.store,
            "--features": features_file,
            "--teacher-results": cfg.teacher_results,
            "--student": cfg.student if Path(cfg.student).exists() else None,
            "--control": cfg.control if cfg.control and Path(cfg.control).exists() else None,
            "--datasets": cfg.datasets,
            "--cache": cfg.cache,
            "--reference": cfg.reference,
        },
    )
    refuse_existing(cfg.out, RESULTS, cfg.overwrite, "an eval")
    keys = heldout_features(features_file, cfg.datasets, _local_model(cfg.student))
    for other in (cfg.control, *cfg.student_seeds, *cfg.control_seeds):  # trained on the same features: checked alike
        if other:
            heldout_features(features_file, cfg.datasets, _local_model(other))
    if len(cfg.control_seeds) not in (0, len(cfg.student_seeds)):
        raise ValueError("--control-seeds pairs with --student-seeds in order: give as many, or none")
    store = ExemplarStore(cfg.store)
    splits = _report_splits(store)
    records = _records(store, keys, features_file)
    # read before any model loads, so a bad folder fails fast
    pick = teacher_from_results(cfg.teacher_results, keys, splits) if cfg.teacher_results is not None else None
    references = reference_explanations(cfg.reference, keys, cfg.reference_label) if cfg.reference else {}
    out = Path(cfg.out)
    with OutputLock(out):
        cache = Cache(cfg.cache or out / "cache.sqlite")
        try:
            style, max_exemplars = _prompt_settings(cfg, features_file)
            cfg = dataclasses.replace(cfg, prompt_style=style, max_exemplars=max_exemplars)
            sims = simulators or [load_simulator(s, cache, dtype=cfg.dtype, limits=cfg.limits) for s in cfg.simulators]
            in_sample: set[str] = set()
            for sim in sims:
                in_sample |= in_sample_features(sim, keys, cfg.allow_in_sample, f"eval --simulator {sim.spec}")
            if pick is not None:
                _check_teacher(pick, store, sims[0].spec)
            scorer = Scorer(sims, cache, cfg, in_sample, keys, splits)
            timings = {"load": time.perf_counter() - t0}
            t = time.perf_counter()
            sides = {"student": _sampled_side(cfg.student, "eval-student", records, cfg, style, cache, scorer)}
            if cfg.control:
                sides["control"] = _sampled_side(
                    cfg.control, "eval-control", records, cfg, style, cache, scorer, greedy_only=True
                )
            for kind, specs in (("student", cfg.student_seeds), ("control", cfg.control_seeds)):
                for i, spec in enumerate(specs, 1):
                    sides[f"{kind}_s{i}"] = _sampled_side(
                        spec, f"eval-{kind}-s{i}", records, cfg, style, cache, scorer, greedy_only=True
                    )
            if cfg.base:
                sides["base"] = _sampled_side(
                    cfg.base, "eval-base", records, cfg, style, cache, scorer, greedy_only=True
                )
            sides["teacher"], pool = _teacher_side(cfg, pick, keys, records, style, cache, scorer)
            timings["generate_and_select"] = time.perf_counter() - t
            t = time.perf_counter()
            features = [
                feature_entry(
                    records[k],
                    _outcomes(records[k], sides, pool, references, scorer, cfg),
                    _insufficient(records[k], splits),
                    splits.report,
                )
                for k in progress(keys, desc=f"eval: score on {splits.report}", unit="feat", disable=not cfg.progress)
            ]
            timings["score"] = time.perf_counter() - t
            timings["score_parts"] = scorer.seconds
            if cfg.intervention:
                t = time.perf_counter()
                _score_by_intervention(cfg, store, records, features)
                timings["intervention"] = time.perf_counter() - t
            explainers = explainer_list(cfg, sides["teacher"], splits)
            data = strict(
                _results(cfg, store, features_file, keys, sides, sims, features, explainers, cache, in_sample)
            )  # in memory as on disk: an undefined value is None
            if cfg.intervention:
                data["intervention"] = strict(_intervention_summary(features, explainers))
            data["timings"] = {**timings, "total": time.perf_counter() - t0}
            results = EvalResults.from_dict(data, out / RESULTS)
        finally:
            cache.close()
        return EvalOutputs(out, results, write_outputs(out, results, report=cfg.report))


def _score_by_intervention(cfg: EvalConfig, store, records: dict, features: list[dict]) -> None:
    """Each row's reported explanation of each subject feature, scored by intervention (into the feature
    entries: `results[row]["intervention"]`)."""

    scorer = InterventionScorer(store, "subject", cfg.steer, cfg.dtype)
    for entry in progress(features, desc="eval: intervention", unit="feat", disable=not cfg.progress):
        if entry["kind"] == "planted" or entry["insufficient"]:
            continue
        for row in entry["results"].values():
            score = scorer.score(records[entry["feature"]], row["explanation"]["text"])
            row["intervention"] = asdict(score)


def _intervention_summary(features: list[dict], explainers) -> dict:
    """Per row, the mean intervention scores over the features that have them (chance 0.5 for each)."""

    out = {}
    for e in explainers:
        found = [
            f["results"][e.name]["intervention"] for f in features if "intervention" in f["results"].get(e.name, {})
        ]
        scores = [InterventionScore(**{**s, "named_tokens": tuple(s["named_tokens"])}) for s in found]
        out[e.name] = {**mean_of(scores), "n_features": len(scores)}
    return out


def _results(cfg, store, features_file, keys, sides, sims, features, explainers, cache, in_sample) -> dict:
    no_llm = Cost(0, len(keys), source="no LLM call").per_explanation()
    cost = {
        TEACHER: sides["teacher"].cost.per_explanation(),
        TEACHER_BEST_OF_1: (
            sides["teacher"].first_cost or Cost(1, len(keys), source="the explain run's sample 0")
        ).per_explanation(),
        STUDENT_BEST_OF_K: sides["student"].cost.per_explanation(),
        STUDENT_BEST_OF_1: sides["student"].first_cost.per_explanation(),
    }
    if "base" in sides:
        cost[BASE_BEST_OF_1] = sides["base"].first_cost.per_explanation()
    if "control" in sides:
        cost[CONTROL_BEST_OF_1] = sides["control"].first_cost.per_explanation()
    for name, side in sides.items():
        if name.startswith(("student_s", "control_s")):
            cost[_seed_side_row(name)] = side.first_cost.per_explanation()
    specs = [s.spec for s in sims]
    kw = dict(n_resamples=cfg.n_resamples, seed=cfg.seed)
    results = {
        "schema_version": SCHEMA_VERSION,
        "config": {
            **to_dict(cfg),
            "selection_split": store.split_names.select,
            "report_split": store.split_names.report,
            "protocol": SCORING_VERSION,
            "sampling": store.protocol,
            "failure_score": FAILURE_SCORE,
        },
        "provenance": {
            "store": str(store.path),
            "store_fingerprint": store.fingerprint,
            "subject_model": store.subject_model,
            "features_file": str(features_file),
            "datasets": [str(d) for d in dataset_folders(features_file, cfg.datasets, cfg.student)],
            "student": backend_spec(cfg.student),
            "student_trained_on": [str(p) for p in trained_on(cfg.student)] if Path(cfg.student).is_dir() else [],
            "base": backend_spec(cfg.base) if cfg.base else None,
            "control": backend_spec(cfg.control) if cfg.control else None,
            "simulators": specs,
            "selection_simulator": specs[0],
            "prompt_version": PROMPT_VERSION,
            "target": cfg.target,
            "in_sample_features": sorted(in_sample),
            **sides["teacher"].provenance,
        },
        "explainers": [asdict(e) for e in explainers],
        "features": features,
        "summary": {s: summarise(features, explainers, s, **kw) for s in specs},
        "comparisons": {s: comparisons(features, explainers, s, **kw) for s in specs},
        "seeded": {s: seeded_comparisons(features, explainers, s, **kw) for s in specs},
        "reliability": {s: reliability(features, explainers, s, **kw) for s in specs},
        "by_kind": {s: by_kind(features, explainers, s, **kw) for s in specs},
        "cost": {e.name: cost.get(e.name, no_llm) for e in explainers},
        "usage": {stage: asdict(u) for stage, u in cache.stages().items()},
        "training": _loss_curves(cfg),
    }
    if cfg.calibration:
        results["calibration"] = read_calibration(cfg.calibration)
    results["gates"] = validity_gates(EvalResults(results))  # a view of the record so far
    return results


def write_outputs(out: Path, results: EvalResults, report: bool = True) -> dict[str, Path]:
    """results.json, eval_table.md / eval_table.json (the model card's table), and with `report`:
    report.md, plots/*.png and browser.html."""

    out.mkdir(parents=True, exist_ok=True)
    files = {"results": write_results(out, results)}
    files.update(write_report(out, results, full=report))
    return files


def eval_command(cfg: EvalConfig, echo: Callable[[str], None] = print) -> EvalOutputs:
    """`neuroscribe eval`: run, then print the primary simulator's table and where the report is."""

    result = evaluate(cfg)
    primary = result.results.primary_simulator
    summary = result.results.summary(primary)
    split = result.results.config["report_split"]
    echo(f"scored by {primary} on the held-out `{split}` split (failures count {FAILURE_SCORE}):")
    for ex in result.results.explainers:
        row = summary[ex.name]
        vs = row.vs_teacher
        echo(
            f"  {ex.label:48s} mean {fmt_interval(row.mean)}  failed {fmt(row.failure_rate, 2)}"
            + (f"  minus teacher {fmt_interval(vs['difference'])}" if vs else "")
        )
    echo(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return result


def rebuild_report(results: str | Path) -> dict[str, Path]:
    """Rewrite report.md, the eval table, plots and browser from a results.json (no model runs)."""

    path = Path(results)
    folder = path if path.is_dir() else path.parent
    return write_outputs(folder, read_results(path))


__all__ = [
    "EvalConfig",
    "EvalOutputs",
    "Scorer",
    "eval_command",
    "evaluate",
    "rebuild_report",
    "write_outputs",
    "best_or_first",
    "top_tokens_explanation",
]
