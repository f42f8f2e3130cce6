"""distill build: turn scored best-of-k candidates into SFT and preference datasets.

Input: an explain run (`runs.explain`) and the exemplar store its meta names. Prompts are rebuilt with
`neuroscribe.prompts`, so the student sees exactly what the teacher saw; a prompt-version mismatch is
an error, not a warning. Output: a dataset folder (`runs.datasets`) that is also a Hub dataset repo:
  sft/{train,validation}.parquet        prompt / completion (conversational), one row per prompt variant
  chat/{train,validation}.parquet       messages (the same rows as one chat)
  preference/{train,validation}.parquet prompt / chosen / rejected
  heldout.txt, build.json, README.md
Splits are drawn by UNIT (kind, layer, index), never by row or polarity: the `+` and `-` features of a
neuron always land on the same side. Empty splits are left out (`load_dataset` rejects them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.configs import DistillConfig
from neuroscribe.distill.cards import FEATURES, dataset_card, push_dataset
from neuroscribe.options import to_dict
from neuroscribe.prompts import PROMPT_VERSION, explainer_exemplars, explainer_messages
from neuroscribe.records import Exemplar, FeatureExemplars, FeatureId, ScoredExplanation, best_candidate
from neuroscribe.runs.datasets import DatasetBuild, read_heldout, write_dataset_folder, write_parquet_splits
from neuroscribe.runs.explain import CANDIDATES, META, ExplainRun, read_explain_run
from neuroscribe.runs.files import RunFileError, guard_output
from neuroscribe.runs.store import ExemplarStore

ANSWER_PREFIX = "Explanation: "  # the answer format the explainer prompt asks for
# sft_control: the format-control student's data, the sft rows with every feature's winner moved to another
# feature's prompt (the same winners, the same form, no content match; `format_control`)
CONFIGS = ("sft", "chat", "preference", "sft_control")
SPLITS = ("train", "validation")

Lookup = Mapping[str, FeatureExemplars] | Callable[[str], FeatureExemplars]


@dataclass(frozen=True)
class FeatureSplit:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    heldout: tuple[str, ...]

    def of(self, key: str) -> str:
        return "train" if key in self.train else "validation" if key in self.validation else "heldout"


@dataclass(frozen=True)
class DistillResult:
    out_dir: Path
    rows: dict[str, dict[str, int]]  # config -> split -> rows
    features: dict[str, int]  # train / validation / heldout -> feature count
    stats: dict

    def summary(self) -> str:
        rows = ", ".join(f"{c} " + "/".join(str(self.rows[c].get(s, 0)) for s in SPLITS) for c in self.rows)
        s = self.stats
        return (
            f"wrote {self.out_dir}: features train/validation/heldout = {self.features['train']}/"
            f"{self.features['validation']}/{self.features['heldout']}; rows (train/validation): {rows}\n"
            f"winners: {s['features_with_winner']} of {s['features']} features at score >= {s['threshold']} "
            f"(winner score mean {_fmt(s['winner_score']['mean'])}); candidates: {s['candidates']} "
            f"({s['unparseable']} unparseable, {s['nan_scores']} NaN scores)"
        )


# --------------------------------------------------------------------------------- reading


def load_scored(scored_dir: str | Path) -> ExplainRun:
    """An explain run checked for distillation: candidates sorted by feature key, prompt versions that
    match the prompts this neuroscribe rebuilds."""
    run = read_explain_run(scored_dir)
    meta_path = run.path / META
    if run.meta.prompt_version != PROMPT_VERSION:
        raise RunFileError(
            f"{meta_path}: field prompt_version is {run.meta.prompt_version!r} but neuroscribe.prompts is at "
            f"{PROMPT_VERSION!r}; the rebuilt prompts would differ from what the teacher saw. Re-run explain."
        )
    for cand in run.candidates:
        version = cand.explanation.prompt_version
        if version and version != run.meta.prompt_version:
            raise RunFileError(
                f"{run.path / CANDIDATES}: field explanation.prompt_version {version!r} != "
                f"meta.json's {run.meta.prompt_version!r} (feature {cand.explanation.feature})"
            )
    if not run.by_feature:
        raise RunFileError(f"{run.path / CANDIDATES}: no candidates")
    return dataclasses.replace(run, by_feature=dict(sorted(run.by_feature.items())))


def store_lookup(scored: ExplainRun) -> Callable[[str], FeatureExemplars]:
    """The exemplar store named in meta.json (a relative path may be relative to the explain folder)."""

    return ExemplarStore(store_path(scored)).get


def store_path(scored: ExplainRun) -> Path:
    store = Path(scored.meta.store)
    if not store.is_absolute() and not store.exists() and (scored.path / store).exists():
        store = scored.path / store
    return store


# --------------------------------------------------------------------- pure selection steps


def _finite(c: ScoredExplanation) -> bool:
    return c.explanation.ok and bool(c.explanation.text.strip()) and math.isfinite(c.score)


def preference_pairs(
    candidates: Iterable[ScoredExplanation], min_margin: float, max_pairs: int
) -> list[tuple[ScoredExplanation, ScoredExplanation]]:
    """(chosen, rejected) pairs whose scores differ by >= min_margin: best vs worst first.

    Unparseable replies and NaN scores take no part; the same text never faces itself.
    """
    ranked = sorted((c for c in candidates if _finite(c)), key=lambda c: (-c.score, c.explanation.sample_index))
    pairs = []
    for chosen in ranked:
        for rejected in reversed(ranked):
            if len(pairs) >= max_pairs or chosen.score - rejected.score < min_margin:
                break
            if chosen.explanation.text.strip().lower() != rejected.explanation.text.strip().lower():
                pairs.append((chosen, rejected))
    return pairs


def unit_of(key: str) -> str:
    """The unit a feature belongs to: its key without the polarity (mlp/L3/12+ and mlp/L3/12- share one)."""
    f = FeatureId.parse(key)
    return f"{f.kind}/L{f.layer}/{f.index}"


def _uniform(unit: str, seed: int) -> float:
    """A unit's fixed position in [0, 1): a seeded hash, so its split never depends on other features."""
    return int(hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()[:13], 16) / 16**13


def split_features(
    keys: Sequence[str],
    heldout_fraction: float = 0.1,
    validation_fraction: float = 0.1,
    seed: int = 0,
    heldout: Sequence[str] | None = None,
) -> FeatureSplit:
    """Assign features (never rows) to train / validation / held-out, by UNIT: both polarities of a
    neuron always share a side.

    A unit goes to held-out when its hash position is below heldout_fraction, to validation when it
    falls in the next validation_fraction: adding features later never moves an existing one, so a
    unit held out once stays held out. A non-zero fraction gets at least one unit. An explicit
    `heldout` list is honoured as given, and reserves the other polarity of each listed unit too.
    """
    for name, frac in (("heldout_fraction", heldout_fraction), ("validation_fraction", validation_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    units = {k: unit_of(k) for k in set(keys) | set(heldout or ())}
    pos = {u: _uniform(u, seed) for u in set(units.values())}
    order = sorted(pos, key=lambda u: (pos[u], u))
    if heldout is None:
        reserved = {u for u in order if pos[u] < heldout_fraction} or set(order[: 1 if heldout_fraction else 0])
    else:
        reserved = {units[k] for k in heldout}
    rest = [u for u in order if u not in reserved]
    lo, hi = heldout_fraction, heldout_fraction + validation_fraction
    validation = {u for u in rest if lo <= pos[u] < hi} or set(rest[: 1 if validation_fraction else 0])
    train = [k for k in keys if units[k] not in reserved and units[k] not in validation]
    if not train:
        raise ValueError(f"no training features left out of {len(set(keys))} after held-out/validation splits")
    held = {k for k in units if units[k] in reserved}
    return FeatureSplit(
        tuple(sorted(set(train))), tuple(sorted(k for k in set(keys) if units[k] in validation)), tuple(sorted(held))
    )


def augmented_exemplars(
    record: FeatureExemplars, n_variants: int, rng: random.Random, pool: int = 20, sizes: tuple[int, int] = (10, 20)
) -> list[list[Exemplar]]:
    """Prompt variants: each a random subset (10-20 of the top 20 by default) of the explain-split
    positives in shuffled order, plus the hard negatives shuffled (used by the contrastive style)."""
    positives, negatives = explainer_exemplars(record)
    top = positives[:pool]
    variants = []
    for _ in range(n_variants):
        k = min(len(top), rng.randint(*sizes))
        negs = list(negatives)
        rng.shuffle(negs)
        variants.append(rng.sample(top, k) + negs)
    return variants


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": ANSWER_PREFIX + " ".join(text.split())}]


# ------------------------------------------------------------------------------- building


def training_records(
    by_feature: Mapping[str, Sequence[ScoredExplanation]], lookup: Lookup, split: FeatureSplit
) -> Iterator[tuple[str, FeatureExemplars, Sequence[ScoredExplanation]]]:
    """(train | validation, exemplars, candidates) of every feature not held out, in `by_feature` order."""
    get = lookup.__getitem__ if isinstance(lookup, Mapping) else lookup
    for key, candidates in by_feature.items():
        part = split.of(key)
        if part == "heldout":
            continue
        record = get(key)
        if record.feature.key != key:
            raise ValueError(f"exemplar lookup returned {record.feature.key} for feature {key}")
        yield part, record, candidates


def build_rows(
    scored: ExplainRun, lookup: Lookup, split: FeatureSplit, cfg: DistillConfig
) -> dict[str, dict[str, list[dict]]]:
    """config -> split -> rows. Held-out features never reach a row."""
    style = scored.meta.prompt_style
    rng = random.Random(cfg.seed)
    out: dict[str, dict[str, list[dict]]] = {c: {s: [] for s in SPLITS} for c in CONFIGS}
    for part, record, candidates in training_records(scored.by_feature, lookup, split):
        key = record.feature.key
        prompt = explainer_messages(record, style=style, max_exemplars=cfg.max_exemplars)
        winner = best_candidate(candidates, cfg.threshold)
        if winner is not None:
            variants = [prompt]
            if part == "train" and cfg.augment:
                variants += [
                    explainer_messages(record, style=style, exemplars=ex, max_exemplars=cfg.max_exemplars)
                    for ex in augmented_exemplars(record, cfg.augment, rng, cfg.augment_pool, cfg.augment_sizes)
                ]
            for i, p in enumerate(variants):
                completion = _assistant(winner.explanation.text)
                common = {
                    "feature": key,
                    "variant": i,
                    "score": float(winner.score),
                    "explainer": winner.explanation.explainer,
                }
                out["sft"][part].append({**common, "prompt": p, "completion": completion})
                out["chat"][part].append({**common, "messages": p + completion})
        for chosen, rejected in preference_pairs(candidates, cfg.min_margin, cfg.max_pairs_per_feature):
            out["preference"][part].append(
                {
                    "feature": key,
                    "prompt": prompt,
                    "chosen": _assistant(chosen.explanation.text),
                    "rejected": _assistant(rejected.explanation.text),
                    "score_chosen": float(chosen.score),
                    "score_rejected": float(rejected.score),
                }
            )
    for part in SPLITS:
        out["sft_control"][part] = format_control(out["sft"][part], cfg.seed)
    return out


def format_control(rows: list[dict], seed: int) -> list[dict]:
    """The sft rows with completions shuffled across features: features in a seeded order, each prompt
    given the next feature's winner (a cycle, so no feature keeps its own; every variant of a feature
    alike). A student trained on these learns the winners' form and none of their content: the control
    that a distillation gain must beat. Fewer than two features: no control rows."""
    winners: dict[str, list] = {}
    for r in rows:
        winners.setdefault(r["feature"], r["completion"])
    order = sorted(winners)
    if len(order) < 2:
        return []
    random.Random(f"format-control:{seed}").shuffle(order)
    source = {key: order[(i + 1) % len(order)] for i, key in enumerate(order)}
    return [{**r, "completion": winners[source[r["feature"]]], "control_of": source[r["feature"]]} for r in rows]


def _describe(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def score_statistics(scored: ExplainRun, threshold: float) -> dict:
    cands = [c for group in scored.by_feature.values() for c in group]
    winners = [best_candidate(g, threshold) for g in scored.by_feature.values()]
    best_any = [max((c.score for c in g if _finite(c)), default=float("nan")) for g in scored.by_feature.values()]
    return {
        "threshold": threshold,
        "features": len(scored.by_feature),
        "features_with_winner": sum(w is not None for w in winners),
        "candidates": len(cands),
        "unparseable": sum(not c.explanation.ok for c in cands),
        "nan_scores": sum(c.explanation.ok and not math.isfinite(c.score) for c in cands),
        "candidate_score": _describe([c.score for c in cands if _finite(c)]),
        "best_score": _describe([s for s in best_any if math.isfinite(s)]),
        "winner_score": _describe([w.score for w in winners if w is not None]),
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def build_datasets(config: DistillConfig, *, records: Lookup | None = None) -> DistillResult:
    """Build every dataset of the module doc from `config.scored` into `config.out`.

    records: FeatureExemplars by key (a mapping or a callable); default: the store in meta.json.
    An existing non-empty output folder is never replaced unless `config.overwrite` is set.
    """

    guard_output(config.out, {"--scored": config.scored, "--heldout-file": config.heldout_file})
    scored = load_scored(config.scored)
    guard_output(config.out, {"store": store_path(scored)})
    # the student must see exactly what the teacher saw: same exemplar count as the explain run
    if scored.meta.recorded("max_exemplars"):
        config = dataclasses.replace(config, max_exemplars=scored.meta.max_exemplars)
    heldout = read_heldout(config.heldout_file) if config.heldout_file else None
    lookup = records if records is not None else store_lookup(scored)
    split = split_features(
        list(scored.by_feature), config.heldout_fraction, config.validation_fraction, config.seed, heldout
    )
    rows = build_rows(scored, lookup, split, config)
    stats = score_statistics(scored, config.threshold)
    if not rows["sft"]["train"] and not rows["preference"]["train"]:
        raise ValueError(
            f"{scored.path}: no training rows: no feature reaches score >= {config.threshold} "
            f"(best {_fmt(stats['best_score']['max'])}) and no pair differs by >= {config.min_margin}"
        )
    info = DatasetBuild(
        scored_dir=str(scored.path),
        meta=scored.meta.to_json(),
        config=to_dict(config),
        inputs={"explain_fingerprint": scored.meta.fingerprint, "store_fingerprint": scored.meta.store_fingerprint},
        source_model=_source_model(scored),
        stats=stats,
        splits={"train": list(split.train), "validation": list(split.validation), "heldout": list(split.heldout)},
        rows={c: {s: len(rows[c][s]) for s in SPLITS} for c in CONFIGS},
    )
    files: dict = {}
    write_dataset_folder(
        config.out,
        lambda tmp: files.update(write_parquet_splits(tmp, rows, FEATURES.__getitem__)),
        list(split.heldout),
        info,
        lambda tmp: dataset_card(info, files).save(tmp / "README.md"),
        config.overwrite,
    )
    out = Path(config.out)
    return DistillResult(out, info.rows, {k: len(v) for k, v in info.splits.items()}, stats)


def _source_model(scored: ExplainRun) -> str:
    """The subject model: meta.json's if the explain stage wrote one, else the store's."""
    if scored.meta.subject_model:
        return scored.meta.subject_model
    try:
        return ExemplarStore(store_path(scored)).subject_model or "unknown"
    except (OSError, ValueError):
        return "unknown"


def build_command(config: DistillConfig, echo: Callable[[str], None] = print) -> DistillResult:
    """`neuroscribe distill build`: build, print a summary, optionally push the folder to the Hub."""
    result = build_datasets(config)
    echo(result.summary())
    if config.push_to_hub:
        url = push_dataset(result.out_dir, config.push_to_hub, private=config.private)
        echo(f"pushed {result.out_dir} to {url}")
    return result
