"""distill build: turn scored best-of-k candidates into SFT and preference datasets.

Input: a scored-candidates folder (`meta.json` + `candidates.jsonl`, one ScoredExplanation per line)
and the exemplar store its meta names. Prompts are rebuilt with `neuroscribe.prompts`, so the student
sees exactly what the teacher saw; a prompt-version mismatch is an error, not a warning.

Output: a folder that is also a Hub dataset repository:
  README.md                             dataset card; its `configs` make `load_dataset(OUT, "sft")` work
  sft/{train,validation}.parquet        prompt / completion (conversational), one row per prompt variant
  chat/{train,validation}.parquet       messages (the same rows as one chat)
  preference/{train,validation}.parquet prompt / chosen / rejected
  heldout.txt                           features reserved for eval; no split above contains them
  build.json                            inputs, parameters, feature splits and score statistics
Splits are drawn by feature, never by row. Empty splits are left out (`load_dataset` rejects them).
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import math
import random
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from neuroscribe.prompts import PROMPT_VERSION, explainer_exemplars, explainer_messages
from neuroscribe.records import Exemplar, FeatureExemplars, ScoredExplanation, from_json

REQUIRED_META = ("store", "teacher", "simulator", "prompt_style", "prompt_version", "k", "split")
ANSWER_PREFIX = "Explanation: "  # the answer format the explainer prompt asks for
CONFIGS = ("sft", "chat", "preference")
SPLITS = ("train", "validation")

Lookup = Mapping[str, FeatureExemplars] | Callable[[str], FeatureExemplars]


@dataclass(frozen=True)
class ScoredCandidates:
    """The explain stage's output: its meta and every candidate, grouped by feature key."""

    path: Path
    meta: dict
    by_feature: dict[str, tuple[ScoredExplanation, ...]]


@dataclass(frozen=True)
class FeatureSplit:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    heldout: tuple[str, ...]

    def of(self, key: str) -> str:
        return "train" if key in self.train else "validation" if key in self.validation else "heldout"


@dataclass(frozen=True)
class DistillConfig:
    threshold: float = 0.3  # an SFT winner needs at least this score
    min_margin: float = 0.1  # chosen minus rejected score, for a preference pair
    max_pairs_per_feature: int = 4
    augment: int = 0  # extra prompt variants per training feature
    augment_pool: int = 20  # variants draw from the top-N explain exemplars (Transluce: 20) ...
    augment_sizes: tuple[int, int] = (10, 20)  # ... this many of them, shuffled (Transluce: 10-20)
    heldout_fraction: float = 0.1
    validation_fraction: float = 0.1
    max_exemplars: int = 20
    seed: int = 0


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


def load_scored(scored_dir: str | Path) -> ScoredCandidates:
    """Read and check a scored-candidates folder; every problem names its file and field."""
    path = Path(scored_dir)
    meta_path, cand_path = path / "meta.json", path / "candidates.jsonl"
    for p in (meta_path, cand_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing (expected the output folder of `neuroscribe explain`)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err})") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{meta_path}: missing field(s) {missing}")
    if meta["prompt_version"] != PROMPT_VERSION:
        raise ValueError(
            f"{meta_path}: field prompt_version is {meta['prompt_version']!r} but neuroscribe.prompts is at "
            f"{PROMPT_VERSION!r}; the rebuilt prompts would differ from what the teacher saw. Re-run explain."
        )
    by_feature: dict[str, list[ScoredExplanation]] = {}
    for lineno, line in enumerate(cand_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{cand_path}:{lineno}"
        try:
            cand = from_json(ScoredExplanation, json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: not a ScoredExplanation ({err})") from None
        if not isinstance(cand.explanation.feature, str) or not cand.explanation.feature:
            raise ValueError(f"{where}: field explanation.feature must be a feature key")
        version = cand.explanation.prompt_version
        if version and version != meta["prompt_version"]:
            raise ValueError(f"{where}: field explanation.prompt_version {version!r} != meta.json's "
                             f"{meta['prompt_version']!r}")
        by_feature.setdefault(cand.explanation.feature, []).append(cand)
    if not by_feature:
        raise ValueError(f"{cand_path}: no candidates")
    return ScoredCandidates(path, meta, {k: tuple(v) for k, v in sorted(by_feature.items())})


def store_lookup(scored: ScoredCandidates) -> Callable[[str], FeatureExemplars]:
    """The exemplar store named in meta.json (a relative path may be relative to the scored folder)."""
    from neuroscribe.store import ExemplarStore

    store = Path(scored.meta["store"])
    if not store.is_absolute() and not store.exists() and (scored.path / store).exists():
        store = scored.path / store
    return ExemplarStore(store).get


# --------------------------------------------------------------------- pure selection steps


def _finite(c: ScoredExplanation) -> bool:
    return c.explanation.ok and bool(c.explanation.text.strip()) and math.isfinite(c.score)


def best_candidate(candidates: Iterable[ScoredExplanation], threshold: float) -> ScoredExplanation | None:
    """The highest-scoring parseable candidate with a finite score >= threshold (ties: first sample)."""
    eligible = [c for c in candidates if _finite(c) and c.score >= threshold]
    return max(eligible, key=lambda c: (c.score, -c.explanation.sample_index), default=None)


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


def _uniform(key: str, seed: int) -> float:
    """A feature's fixed position in [0, 1): a seeded hash, so its split never depends on other features."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:13], 16) / 16**13


def split_features(
    keys: Sequence[str],
    heldout_fraction: float = 0.1,
    validation_fraction: float = 0.1,
    seed: int = 0,
    heldout: Sequence[str] | None = None,
) -> FeatureSplit:
    """Assign features (never rows) to train / validation / held-out.

    A feature goes to held-out when its hash position is below heldout_fraction, to validation when
    it falls in the next validation_fraction: adding features later never moves an existing one, so
    a feature held out once stays held out. A non-zero fraction gets at least one feature. An explicit
    `heldout` list is honoured as given (keys absent from `keys` stay reserved too).
    """
    for name, frac in (("heldout_fraction", heldout_fraction), ("validation_fraction", validation_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    pos = {k: _uniform(k, seed) for k in set(keys)}
    order = sorted(pos, key=pos.get)
    if heldout is None:
        reserved = {k for k in order if pos[k] < heldout_fraction} or set(order[: 1 if heldout_fraction else 0])
    else:
        reserved = set(heldout)
    rest = [k for k in order if k not in reserved]
    lo, hi = heldout_fraction, heldout_fraction + validation_fraction
    validation = {k for k in rest if lo <= pos[k] < hi} or set(rest[: 1 if validation_fraction else 0])
    train = [k for k in rest if k not in validation]
    if not train:
        raise ValueError(f"no training features left out of {len(order)} after held-out/validation splits")
    return FeatureSplit(tuple(sorted(train)), tuple(sorted(validation)), tuple(sorted(reserved)))


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


def build_rows(
    scored: ScoredCandidates, lookup: Lookup, split: FeatureSplit, cfg: DistillConfig
) -> dict[str, dict[str, list[dict]]]:
    """config -> split -> rows. Held-out features never reach a row."""
    get = lookup.__getitem__ if isinstance(lookup, Mapping) else lookup
    style = scored.meta["prompt_style"]
    rng = random.Random(cfg.seed)
    out: dict[str, dict[str, list[dict]]] = {c: {s: [] for s in SPLITS} for c in CONFIGS}
    for key, candidates in scored.by_feature.items():
        part = split.of(key)
        if part == "heldout":
            continue
        record = get(key)
        if record.feature.key != key:
            raise ValueError(f"exemplar lookup returned {record.feature.key} for feature {key}")
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
                common = {"feature": key, "variant": i, "score": float(winner.score),
                          "explainer": winner.explanation.explainer}
                out["sft"][part].append({**common, "prompt": p, "completion": completion})
                out["chat"][part].append({**common, "messages": p + completion})
        for chosen, rejected in preference_pairs(candidates, cfg.min_margin, cfg.max_pairs_per_feature):
            out["preference"][part].append({
                "feature": key, "prompt": prompt, "chosen": _assistant(chosen.explanation.text),
                "rejected": _assistant(rejected.explanation.text),
                "score_chosen": float(chosen.score), "score_rejected": float(rejected.score),
            })
    return out


def _describe(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def score_statistics(scored: ScoredCandidates, threshold: float) -> dict:
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


def build_datasets(
    scored_dir: str | Path,
    out_dir: str | Path,
    config: DistillConfig = DistillConfig(),
    *,
    records: Lookup | None = None,
    heldout_features: Sequence[str] | None = None,
    overwrite: bool = False,
) -> DistillResult:
    """Build every dataset of the module doc from `scored_dir` into `out_dir`.

    records: FeatureExemplars by key (a mapping or a callable); default: the store in meta.json.
    heldout_features: reserve exactly these (e.g. an eval set fixed earlier) instead of a fraction.
    An existing non-empty `out_dir` is never replaced unless `overwrite` is set.
    """
    from neuroscribe.distill.cards import dataset_card, write_parquet_splits

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    scored = load_scored(scored_dir)
    # the student must see exactly what the teacher saw: same exemplar count as the explain run
    config = dataclasses.replace(config, max_exemplars=int(scored.meta.get("max_exemplars", config.max_exemplars)))
    lookup = records if records is not None else store_lookup(scored)
    split = split_features(list(scored.by_feature), config.heldout_fraction, config.validation_fraction,
                           config.seed, heldout_features)
    rows = build_rows(scored, lookup, split, config)
    if not rows["sft"]["train"] and not rows["preference"]["train"]:
        stats = score_statistics(scored, config.threshold)
        raise ValueError(f"{scored.path}: no training rows: no feature reaches score >= {config.threshold} "
                         f"(best {_fmt(stats['best_score']['max'])}) and no pair differs by >= {config.min_margin}")
    stats = score_statistics(scored, config.threshold)
    info = {
        "scored_dir": str(scored.path), "meta": scored.meta, "config": asdict(config),
        "source_model": _source_model(scored), "stats": stats,
        "splits": {"train": list(split.train), "validation": list(split.validation), "heldout": list(split.heldout)},
        "rows": {c: {s: len(rows[c][s]) for s in SPLITS} for c in CONFIGS},
    }
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = write_parquet_splits(tmp, rows)
    (tmp / "heldout.txt").write_text("".join(f"{k}\n" for k in split.heldout))
    (tmp / "build.json").write_text(json.dumps(info, indent=2, allow_nan=True))
    dataset_card(info, files).save(tmp / "README.md")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return DistillResult(out, info["rows"], {k: len(v) for k, v in info["splits"].items()}, stats)


def _source_model(scored: ScoredCandidates) -> str:
    """The subject model: meta.json's `model` if the explain stage wrote one, else the store's."""
    if "model" in scored.meta:
        return str(scored.meta["model"])
    try:
        from neuroscribe.store import ExemplarStore

        return str(ExemplarStore(scored.meta["store"]).meta.get("model", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def read_heldout(path: str | Path) -> list[str]:
    """Held-out feature keys (what eval must use, and training must not), from a heldout.txt file or
    the `distill build` folder holding one."""
    path = Path(path)
    file = path / "heldout.txt" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"held-out feature list {file} does not exist")
    return [ln.strip() for ln in file.read_text().splitlines() if ln.strip()]


def build_command(
    scored: str | Path,
    out: str | Path,
    threshold: float = 0.3,
    min_margin: float = 0.1,
    max_pairs: int = 4,
    augment: int = 0,
    heldout_fraction: float = 0.1,
    validation_fraction: float = 0.1,
    heldout_file: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = True,
    echo: Callable[[str], None] = print,
) -> DistillResult:
    """`neuroscribe distill build`: build, print a summary, optionally push the folder to the Hub."""
    heldout = read_heldout(heldout_file) if heldout_file is not None else None
    cfg = DistillConfig(threshold=threshold, min_margin=min_margin, max_pairs_per_feature=max_pairs,
                        augment=augment, heldout_fraction=heldout_fraction,
                        validation_fraction=validation_fraction, seed=seed)
    result = build_datasets(scored, out, cfg, heldout_features=heldout, overwrite=overwrite)
    echo(result.summary())
    if push_to_hub:
        from neuroscribe.distill.cards import push_dataset

        url = push_dataset(result.out_dir, push_to_hub, private=private)
        echo(f"pushed {result.out_dir} to {url}")
    return result
