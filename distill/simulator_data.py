"""distill simulator-data: (explanation, exemplar, per-token class) rows for training a simulator.

Input: a scored-candidates folder (`neuroscribe explain` output) and the exemplar store its meta
names. Two curricula, one row per (explanation, exemplar):
  stage1  every exemplar of a feature paired with `random_per_exemplar` candidates drawn at random
          from that feature's parseable candidates (any quality: the simulator learns to read
          explanations of every kind, good and bad),
  stage2  every exemplar paired with the feature's best-scoring candidate (finite score only).
Exemplars: all splits and sources of the feature (features, not exemplars, are what evaluation
holds out). Classes follow `neuroscribe.simulators.finetuned_format.activation_classes` with the
feature's max (`feature_max`).

Features are split train / validation / held-out with `distill.datasets.split_features` (seeded
hash, stable as features are added); an explicit held-out list (a `heldout.txt` or a
`distill build` folder holding one) is honoured as given, so the explainer's and the simulator's
evaluation features can be the same set. Held-out features never reach a row.

Output: a dataset folder (`runs.datasets`; a Hub dataset repository, `load_dataset(OUT, "stage1")`
works) with stage1/{train,validation}.parquet, stage2/{train,validation}.parquet, heldout.txt,
build.json and README.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.configs import SimulatorDataConfig
from neuroscribe.options import to_dict
from neuroscribe.records import Exemplar, FeatureExemplars, ScoredExplanation, best_candidate
from neuroscribe.runs.datasets import DatasetBuild, read_heldout, write_dataset_folder, write_parquet_splits
from neuroscribe.runs.files import guard_output
from neuroscribe.simulators.finetuned_format import activation_classes, feature_max

from .datasets import FeatureSplit, load_scored, split_features, store_lookup, store_path, training_records

STAGES = ("stage1", "stage2")
SPLITS = ("train", "validation")
Lookup = Mapping[str, FeatureExemplars] | Callable[[str], FeatureExemplars]


@dataclass(frozen=True)
class SimulatorDataResult:
    out_dir: Path
    rows: dict[str, dict[str, int]]  # stage -> split -> rows
    features: dict[str, int]  # train / validation / heldout -> count

    def summary(self) -> str:
        rows = ", ".join(f"{s} " + "/".join(str(self.rows[s][p]) for p in SPLITS) for s in STAGES)
        f = self.features
        return (
            f"wrote {self.out_dir}: features train/validation/heldout = {f['train']}/{f['validation']}/"
            f"{f['heldout']}; rows (train/validation): {rows}"
        )


def feature_rows(
    record: FeatureExemplars,
    explanation: str,
    stage: str,
    score: float = math.nan,
    exemplars: Sequence[Exemplar] | None = None,
) -> list[dict]:
    """One row per exemplar of `record` (or of `exemplars`, some of them), labelled for `explanation`
    with classes relative to the feature's max."""
    max_a = feature_max(record)
    return [
        {
            "feature": record.feature.key,
            "stage": stage,
            "explanation": explanation,
            "explanation_score": float(score),
            "window_id": e.window_id,
            "split": e.split,
            "source": e.source,
            "tokens": list(e.tokens),
            "activations": [float(a) for a in e.activations],
            "classes": activation_classes(e.activations, max_a),
            "max_activation": max_a,
        }
        for e in (record.exemplars if exemplars is None else exemplars)
    ]


def _usable(c: ScoredExplanation) -> bool:
    return c.explanation.ok and bool(c.explanation.text.strip())


def stage_rows(
    record: FeatureExemplars, candidates: Sequence[ScoredExplanation], cfg: SimulatorDataConfig, rng: random.Random
) -> dict[str, list[dict]]:
    """stage1: each exemplar with random candidates; stage2: each exemplar with the best (module doc)."""
    usable = [c for c in candidates if _usable(c)]
    out: dict[str, list[dict]] = {s: [] for s in STAGES}
    if not usable:
        return out
    for e in record.exemplars:
        for c in rng.sample(usable, min(cfg.random_per_exemplar, len(usable))):
            out["stage1"] += feature_rows(record, c.explanation.text, "stage1", c.score, exemplars=[e])
    best = best_candidate(usable)
    if best is not None:
        out["stage2"] = feature_rows(record, best.explanation.text, "stage2", best.score)
    return out


def build_rows(
    by_feature: Mapping[str, Sequence[ScoredExplanation]], lookup: Lookup, split: FeatureSplit, cfg: SimulatorDataConfig
) -> dict[str, dict[str, list[dict]]]:
    """stage -> split -> rows; held-out features never reach a row."""
    rng = random.Random(cfg.seed)
    out: dict[str, dict[str, list[dict]]] = {s: {p: [] for p in SPLITS} for s in STAGES}
    for part, record, candidates in training_records(by_feature, lookup, split):
        for stage, rows in stage_rows(record, candidates, cfg, rng).items():
            out[stage][part] += rows
    return out


def write_simulator_dataset(
    folder: str | Path,
    rows: dict[str, dict[str, list[dict]]],
    heldout: Iterable[str],
    info: DatasetBuild,
    overwrite: bool = False,
) -> Path:
    """Parquet per stage and split, heldout.txt, build.json and a card (`runs.datasets` layout)."""
    from datasets import Features, List, Value
    from huggingface_hub import DatasetCard, DatasetCardData

    schema = Features(
        {
            "feature": Value("string"),
            "stage": Value("string"),
            "explanation": Value("string"),
            "explanation_score": Value("float64"),
            "window_id": Value("int64"),
            "split": Value("string"),
            "source": Value("string"),
            "tokens": List(Value("string")),
            "activations": List(Value("float32")),
            "classes": List(Value("int8")),
            "max_activation": Value("float64"),
        }
    )
    configs: list[dict] = []

    def fill(tmp: Path) -> None:
        files = write_parquet_splits(tmp, rows, lambda _: schema)
        configs.extend(
            {"config_name": stage, "data_files": [{"split": s, "path": p} for s, p in splits.items()]}
            for stage, splits in files.items()
        )

    def card(tmp: Path) -> None:
        data = DatasetCardData(
            configs=configs,
            license="apache-2.0",
            language=["en"],
            tags=["interpretability", "neuroscribe", "activation-simulator"],
            pretty_name="neuroscribe simulator training data",
        )
        DatasetCard("---\n" + data.to_yaml() + "\n---\n" + _card_body(rows, info)).save(tmp / "README.md")

    return write_dataset_folder(folder, fill, list(heldout), info, card, overwrite)


def _card_body(rows: dict[str, dict[str, list[dict]]], info: DatasetBuild) -> str:
    counts = "\n".join(f"| {s} | {len(rows[s]['train'])} | {len(rows[s]['validation'])} |" for s in rows)
    return f"""
# Simulator training data (neuroscribe)

Rows of (explanation, exemplar tokens, per-token activation class 0..10) for training a per-token
activation simulator (`neuroscribe train simulator`). Class = min(10, floor(10 * relu(a) /
max_a)), max_a the feature's max activation. `stage1` pairs every exemplar with random candidate
explanations of its feature, `stage2` with its best-scoring one. Built by
`neuroscribe distill simulator-data` from `{info.scored_dir}`.

| stage | train rows | validation rows |
|---|---|---|
{counts}

Splits are drawn by unit; `heldout.txt` lists features reserved for evaluation (in no split).
"""


def build_simulator_data(config: SimulatorDataConfig, *, records: Lookup | None = None) -> SimulatorDataResult:
    """Build the stage1/stage2 datasets of the module doc from `config.scored` into `config.out`.

    records: FeatureExemplars by key; default: the store named in the explain run's meta.json.
    """
    guard_output(config.out, {"--scored": config.scored, "--heldout-file": config.heldout_file})
    scored = load_scored(config.scored)
    guard_output(config.out, {"store": store_path(scored)})
    heldout = read_heldout(config.heldout_file) if config.heldout_file else None
    lookup = records if records is not None else store_lookup(scored)
    split = split_features(
        list(scored.by_feature), config.heldout_fraction, config.validation_fraction, config.seed, heldout
    )
    rows = build_rows(scored.by_feature, lookup, split, config)
    if not rows["stage1"]["train"]:
        raise ValueError(f"{scored.path}: no training rows (no training feature has a parseable candidate)")
    info = DatasetBuild(
        scored_dir=str(scored.path),
        meta=scored.meta.to_json(),
        config=to_dict(config),
        source_model=scored.meta.subject_model,
        splits={"train": list(split.train), "validation": list(split.validation), "heldout": list(split.heldout)},
        rows={s: {p: len(rows[s][p]) for p in SPLITS} for s in STAGES},
    )
    out = write_simulator_dataset(config.out, rows, split.heldout, info, config.overwrite)
    return SimulatorDataResult(out, info.rows, {k: len(v) for k, v in info.splits.items()})


def simulator_data_command(config: SimulatorDataConfig, echo: Callable[[str], None] = print) -> SimulatorDataResult:
    """`neuroscribe distill simulator-data`: build and print a summary."""
    result = build_simulator_data(config)
    echo(result.summary())
    return result
