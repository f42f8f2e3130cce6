"""`neuroscribe eval`: student vs teacher vs baselines on held-out features, one simulator for all.

Explainers, each giving one explanation per held-out feature:
- teacher: the distill run's candidates (its best on the `score` split), or k fresh samples from a
  teacher spec, best on `score`;
- student_best_of_k: k samples from the student, best on `score`; student_best_of_1: its first sample;
- baseline_top_tokens: 'the tokens " x", "y"', the tokens at the peaks of the explain-split exemplars;
- baseline_random_feature: the teacher's explanation of a random other feature (a lower bound).
Every reported explanation is then scored by the same simulator on the same `test` exemplars, which
no selection looked at (see `results` for why). Everything goes through the sqlite cache, so a rerun
generates and simulates nothing twice. Outputs: see `write_outputs`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from neuroscribe.backends import SamplingParams
from neuroscribe.cache import Cache, cache_key
from neuroscribe.configs import EvalConfig
from neuroscribe.prompts import PROMPT_VERSION
from neuroscribe.records import Explanation, FeatureExemplars, ScoredExplanation
from neuroscribe.runs.datasets import heldout_file, read_build
from neuroscribe.runs.eval import RESULTS
from neuroscribe.runs.files import guard_output, refuse_existing
from neuroscribe.runs.store import ExemplarStore
from neuroscribe.scorers import cached_score
from neuroscribe.simulators import load_simulator

from .explainers import (
    Samples,
    TeacherPick,
    backend_spec,
    best_or_first,
    explainer_backend,
    random_other_explanation,
    sample_explanations,
    teacher_from_results,
    top_tokens_explanation,
)
from .heldout import heldout_features
from .results import (
    REPORT_SPLIT,
    SCHEMA_VERSION,
    SELECTION_SPLIT,
    Cost,
    Explainer,
    Outcome,
    feature_entry,
    scored_exemplars,
    summarise,
)


@dataclass(frozen=True)
class EvalOutputs:
    out: Path
    results: dict
    files: dict[str, Path]


# ------------------------------------------------------------------------------ scoring


class Scorer:
    """cached_score plus cached detection/fuzzing, with the seconds spent on fresh work."""

    def __init__(self, simulator, cache: Cache, detection: bool):
        if detection and not hasattr(simulator, "yes_probabilities"):
            raise ValueError(f"--detection needs a local simulator (hf:MODEL); {simulator.spec} cannot answer Yes/No")
        self.simulator, self.cache, self.detection = simulator, cache, detection

    def score(self, explanation: Explanation, record: FeatureExemplars, split: str) -> ScoredExplanation:
        return cached_score(self.simulator, explanation, record, split, self.cache, stage="eval-simulate")

    def judge(self, name: str, fn: Callable, explanation: Explanation, record: FeatureExemplars) -> float:
        if not explanation.ok:
            return math.nan
        key = cache_key(
            "judge",
            self.simulator.spec,
            {
                "judge": name,
                "explanation": explanation.text,
                "feature": record.feature.key,
                "split": REPORT_SPLIT,
                "exemplars": [e.window_id for e in record.select(REPORT_SPLIT)],
            },
        )
        hit = self.cache.get(key)
        if hit is not None:
            return math.nan if hit["value"] is None else float(hit["value"])
        value = fn(self.simulator, explanation, record, REPORT_SPLIT)
        self.cache.put(
            key,
            {"value": None if math.isnan(value) else value},
            kind="judge",
            model=self.simulator.spec,
            stage="eval-judge",
        )
        return value

    def outcome(
        self,
        chosen: Explanation,
        record: FeatureExemplars,
        selection_score: float = math.nan,
        candidates: tuple[ScoredExplanation, ...] = (),
    ) -> Outcome:
        reported = self.score(chosen, record, REPORT_SPLIT)
        if not self.detection:
            return Outcome(reported, selection_score, candidates)
        from neuroscribe.scorers import detection_score, fuzzing_score

        return Outcome(
            reported,
            selection_score,
            candidates,
            self.judge("detection", detection_score, chosen, record),
            self.judge("fuzzing", fuzzing_score, chosen, record),
        )


# ------------------------------------------------------------------------------ the run


def _records(store: ExemplarStore, keys: list[str], features_file: Path) -> dict[str, FeatureExemplars]:
    unknown = [k for k in keys if k not in set(store.keys(include_dead=True))]
    if unknown:
        raise KeyError(f"{features_file}: feature(s) {unknown[:5]} are not in the store {store.path}")
    records = {k: store.get(k) for k in keys}
    for key, r in records.items():
        for split in (SELECTION_SPLIT, REPORT_SPLIT):
            if not scored_exemplars(r, split):
                raise ValueError(
                    f"{store.path}: feature {key} has no top/quantile/random exemplars in split "
                    f"{split!r}; eval needs both held-out splits (collect with --splits explain,score,test)"
                )
    return records


def _prompt_settings(cfg: EvalConfig, features_file: Path) -> tuple[str, int]:
    """(prompt style, exemplars per prompt): as given, else what the training datasets were built with,
    so the student is asked in the format it was trained on."""
    info = read_build(cfg.datasets or features_file.parent) or {}
    style = cfg.prompt_style or info.get("meta", {}).get("prompt_style", "plain")
    return style, cfg.max_exemplars or int(info.get("config", {}).get("max_exemplars", 20))


def _best_of(samples: Samples, records, scorer: Scorer, bar) -> tuple[dict, float]:
    """Score every sample on the selection split; (feature -> (winner, candidates), seconds)."""
    start, picks = time.perf_counter(), {}
    for key, explanations in samples.by_feature.items():
        scored = tuple(scorer.score(e, records[key], SELECTION_SPLIT) for e in explanations)
        picks[key] = (best_or_first(scored), scored)
        bar.update(1)
    return picks, time.perf_counter() - start


@dataclass(frozen=True)
class _Side:
    """One model explainer's picks: feature -> (winner, candidates on the selection split)."""

    picks: dict
    cost: Cost  # of best-of-k: every sample plus the selection scoring
    first_cost: Cost | None = None  # of sample 0 alone (best-of-1); None for a teacher from results
    provenance: dict = dataclasses.field(default_factory=dict)


def _sampled_side(
    spec: str, stage: str, records, cfg: EvalConfig, style: str, cache: Cache, scorer: Scorer, bar
) -> _Side:
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
    samples = sample_explanations(
        explainer_backend(spec, cache, stage, cfg.dtype), records, cfg.k, params, style, cfg.max_exemplars, stage
    )
    picks, select_s = _best_of(samples, records, scorer, bar)
    cost = dataclasses.replace(
        samples.all, seconds=None if samples.all.seconds is None else samples.all.seconds + select_s
    )
    return _Side(picks, cost, samples.first)


def _teacher_side(
    cfg: EvalConfig, pick: TeacherPick | None, keys: list[str], records, style: str, cache: Cache, scorer: Scorer, bar
) -> tuple[_Side, dict]:
    """(the teacher's side, the pool of teacher explanations the random-feature baseline draws from)."""
    if pick is None:
        side = _sampled_side(cfg.teacher, "eval-teacher", records, cfg, style, cache, scorer, bar)
        side = dataclasses.replace(
            side,
            provenance={"teacher": backend_spec(cfg.teacher), "teacher_selection_simulator": scorer.simulator.spec},
        )
        return side, {key: winner.explanation for key, (winner, _) in side.picks.items()}
    bar.update(len(keys))
    picks = {key: (best_or_first(pick.candidates[key]), pick.candidates[key]) for key in keys}
    pool = {key: best_or_first(c).explanation for key, c in pick.candidates.items()}  # every feature it explained
    return _Side(picks, pick.cost, provenance=pick.provenance), pool


def explainer_list(k: int, teacher_samples: int) -> list[Explainer]:
    out = [
        Explainer(
            "teacher", f"teacher (best of {teacher_samples})", "teacher", teacher_samples, f"best on {SELECTION_SPLIT}"
        )
    ]
    if k > 1:
        out.append(Explainer("student_best_of_k", f"student best-of-{k}", "student", k, f"best on {SELECTION_SPLIT}"))
    return out + [
        Explainer("student_best_of_1", "student best-of-1", "student", 1, "first sample"),
        Explainer("baseline_top_tokens", "baseline: top tokens", "baseline", 0, "explain-split peak tokens"),
        Explainer(
            "baseline_random_feature",
            "baseline: random other feature",
            "baseline",
            0,
            "teacher's explanation of another feature",
        ),
    ]


def _outcomes(
    record: FeatureExemplars, teacher: _Side, student: _Side, pool: dict, scorer: Scorer, k: int, seed: int
) -> dict[str, Outcome]:
    """Every explainer's reported explanation for one feature, scored on the report split."""
    key = record.feature.key
    winner, cands = teacher.picks[key]
    out = {"teacher": scorer.outcome(winner.explanation, record, winner.score, cands)}
    winner, cands = student.picks[key]
    if k > 1:
        out["student_best_of_k"] = scorer.outcome(winner.explanation, record, winner.score, cands)
    out["student_best_of_1"] = scorer.outcome(cands[0].explanation, record, cands[0].score, cands[:1])
    out["baseline_top_tokens"] = scorer.outcome(top_tokens_explanation(record), record)
    other = random_other_explanation(key, pool, seed)
    if other is not None:  # a single-feature eval has no other feature to borrow from
        out["baseline_random_feature"] = scorer.outcome(other, record)
    return out


def evaluate(cfg: EvalConfig, simulator=None) -> EvalOutputs:
    """Run the eval (module doc) and write its outputs; `simulator` overrides `cfg.simulator` (an object
    with `spec` and `simulate`, e.g. one the caller already loaded)."""
    t0 = time.perf_counter()
    features_file = heldout_file(cfg.features)
    guard_output(
        cfg.out,
        {
            "--store": cfg.store,
            "--features": features_file,
            "--teacher-results": cfg.teacher_results,
            "--student": cfg.student if Path(cfg.student).exists() else None,
            "--datasets": cfg.datasets,
            "--cache": cfg.cache,
        },
    )
    refuse_existing(cfg.out, RESULTS, cfg.overwrite, "an eval")
    student_spec = backend_spec(cfg.student)
    local_student = student_spec[3:] if student_spec.startswith("hf:") else None
    keys = heldout_features(features_file, cfg.datasets, local_student)
    store = ExemplarStore(cfg.store)
    records = _records(store, keys, features_file)
    # read before any model loads, so a bad folder fails fast
    pick = teacher_from_results(cfg.teacher_results, keys) if cfg.teacher_results is not None else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(cfg.cache or out / "cache.sqlite")
    try:
        style, max_exemplars = _prompt_settings(cfg, features_file)
        cfg = dataclasses.replace(cfg, prompt_style=style, max_exemplars=max_exemplars)
        simulator = simulator or load_simulator(cfg.simulator, cache, dtype=cfg.dtype)
        scorer = Scorer(simulator, cache, cfg.detection)
        timings = {"load": time.perf_counter() - t0}
        t = time.perf_counter()
        with tqdm(total=len(keys) * 2, desc="eval: best of k", unit="feat", disable=not cfg.progress) as bar:
            student = _sampled_side(cfg.student, "eval-student", records, cfg, style, cache, scorer, bar)
            teacher, pool = _teacher_side(cfg, pick, keys, records, style, cache, scorer, bar)
        timings["generate_and_select"] = time.perf_counter() - t
        t = time.perf_counter()
        features = [
            feature_entry(records[key], _outcomes(records[key], teacher, student, pool, scorer, cfg.k, cfg.seed))
            for key in tqdm(keys, desc=f"eval: score on {REPORT_SPLIT}", unit="feat", disable=not cfg.progress)
        ]
        timings["score_report_split"] = time.perf_counter() - t
        explainers = explainer_list(cfg.k, teacher.cost.samples_per_feature)
        no_llm = Cost(0, len(keys), source="no LLM call").per_explanation()
        cost = {
            "teacher": teacher.cost.per_explanation(),
            "student_best_of_k": student.cost.per_explanation(),
            "student_best_of_1": student.first_cost.per_explanation(),
            "baseline_top_tokens": no_llm,
            "baseline_random_feature": no_llm,
        }
        timings["total"] = time.perf_counter() - t0
        results = {
            "schema_version": SCHEMA_VERSION,
            "config": {**asdict(cfg), "selection_split": SELECTION_SPLIT, "report_split": REPORT_SPLIT},
            "provenance": {
                "store": str(store.path),
                "subject_model": store.meta.get("model"),
                "features_file": str(features_file),
                "datasets": str(cfg.datasets or features_file.parent),
                "student": backend_spec(cfg.student),
                "simulator": simulator.spec,
                "prompt_version": PROMPT_VERSION,
                **teacher.provenance,
            },
            "explainers": [asdict(e) for e in explainers],
            "features": features,
            "summary": summarise(features, explainers, cfg.n_resamples, cfg.seed),
            "cost": {e.name: cost[e.name] for e in explainers},
            "usage": {stage: asdict(u) for stage, u in cache.stages().items()},
            "timings": timings,
        }
    finally:
        cache.close()
    return EvalOutputs(out, results, write_outputs(out, results, report=cfg.report))


def write_outputs(out: Path, results: dict, report: bool = True) -> dict[str, Path]:
    """results.json, eval_table.md / eval_table.json (the model card's table), and with `report`:
    report.md, plots/*.png and browser.html."""
    from neuroscribe.runs.eval import write_results

    from .report import write_report

    out.mkdir(parents=True, exist_ok=True)
    files = {"results": write_results(out, results)}
    files.update(write_report(out, results, full=report))
    return files


def eval_command(echo: Callable[[str], None] = print, **kwargs) -> EvalOutputs:
    """`neuroscribe eval`: run, then print the table and where the report is."""
    from .results import fmt_interval

    result = evaluate(EvalConfig(**kwargs))
    s = result.results["summary"]
    for ex in result.results["explainers"]:
        vs = s[ex["name"]]["vs_teacher"]
        echo(
            f"{ex['label']:34s} mean {fmt_interval(s[ex['name']]['mean'])}"
            + (f"  minus teacher {fmt_interval(vs['difference'])}" if vs else "")
        )
    echo(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return result


def rebuild_report(results: str | Path) -> dict[str, Path]:
    """Rewrite report.md, the eval table, plots and browser from a results.json (no model runs)."""
    from neuroscribe.runs.eval import read_results

    path = Path(results)
    folder = path if path.is_dir() else path.parent
    return write_outputs(folder, read_results(path))
