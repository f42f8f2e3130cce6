"""Dataset folders: written by `distill build` (explainer data) and `distill simulator-data`
(simulator data); read by the training entry points, eval's leak check and the demo.

  {config}/{split}.parquet  config sft | chat | preference | sft_control (build: the format-control
                            student's rows) or stage1 | stage2 (simulator data);
                            split train | validation; every row has a `feature` column
  heldout.txt               features reserved for evaluation, one key per line (`#` comments allowed);
                            no split of the folder contains them
  build.json                `DatasetBuild`: the explain run it came from (its meta), the build's config,
                            inputs (with their fingerprints), feature splits {train, validation, heldout},
                            row counts per config and split, score statistics
  README.md                 the dataset card (its `configs` make `load_dataset(FOLDER, config)` work)

The folder is built in a fresh sibling `.NAME.XXXX.building` folder and moved into place, so it is never
half written, and no existing path is ever deleted to make room for it; one build at a time holds a
lock beside it (`.NAME.neuroscribe.lock`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from dataclasses import field as dataclass_field
from pathlib import Path

from neuroscribe.records import FeatureId
from neuroscribe.runs.files import (
    RunFileError,
    building_folder,
    field,
    read_json,
    read_text,
    refuse_nonempty,
    replace_folder,
    sibling_lock,
    write_json,
    write_text,
)

BUILD, HELDOUT = "build.json", "heldout.txt"
TRAINING_SPLITS = ("train", "validation")  # validation steers training, so it is no held-out evidence
CONFIGS = ("sft", "chat", "preference", "sft_control", "stage1", "stage2")


@dataclass(frozen=True)
class DatasetBuild:
    """build.json of a dataset folder."""

    splits: dict[str, list[str]]  # train / validation / heldout feature keys: the one required field
    scored_dir: str = ""  # the explain run the rows come from (or what stood in for it)
    rows: dict[str, dict[str, int]] = dataclass_field(default_factory=dict)  # config -> split -> row count
    meta: dict | None = None  # the explain run's meta.json (`runs.explain.ExplainMeta`)
    config: dict | None = None  # the build's DistillConfig / SimulatorDataConfig
    inputs: dict | None = None  # fingerprints of the explain run and the store
    source_model: str | None = None  # the subject model
    stats: dict | None = None  # score statistics of the candidates

    def explain_meta(self, name: str, default=None):
        """A field of the explain run's meta (the teacher, prompt style, ...), as the build recorded it."""
        return (self.meta or {}).get(name, default)

    def setting(self, name: str, default=None):
        """A field of the build's own config (max_exemplars, threshold, ...)."""
        return (self.config or {}).get(name, default)

    @classmethod
    def from_json(cls, data: Mapping, where: Path) -> DatasetBuild:
        field(data, "splits", where, dict)
        for name, kind in (("scored_dir", str), ("rows", dict)):
            if name in data:
                field(data, name, where, kind)
        names = {f.name for f in fields(cls)}
        splits = {k: list(data["splits"].get(k, [])) for k in ("train", *TRAINING_SPLITS[1:], "heldout")}
        return cls(**{**{k: v for k, v in data.items() if k in names}, "splits": splits})


def heldout_file(path: str | Path) -> Path:
    """A held-out list: the file itself, or `heldout.txt` inside a dataset folder."""
    path = Path(path)
    file = path / HELDOUT if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no held-out feature list (expected `heldout.txt` from `neuroscribe distill build`)"
        )
    return file


def write_heldout(file: str | Path, keys: Iterable[str]) -> Path:
    """A held-out list: one feature key per line."""
    return write_text(Path(file), "".join(f"{k}\n" for k in keys))


def read_heldout(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Feature keys of a held-out list (file or dataset folder), in order, duplicates dropped."""
    file = heldout_file(path)
    keys: list[str] = []
    for n, line in enumerate(read_text(file).splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            key = FeatureId.parse(text).key
        except ValueError as err:
            raise RunFileError(f"{file}:{n}: {err}") from None
        if key not in keys:
            keys.append(key)
    if not keys and not allow_empty:
        raise RunFileError(f"{file}: lists no features")
    return keys


def read_build(folder: str | Path) -> DatasetBuild | None:
    """build.json of a dataset folder, or None when the folder has none (a Hub dataset, say)."""
    path = Path(folder) / BUILD
    return DatasetBuild.from_json(read_json(path, "a dataset folder's build record"), path) if path.is_file() else None


def is_built(folder: str | Path) -> bool:
    return (Path(folder) / BUILD).is_file()


def feature_splits(folder: str | Path) -> dict[str, list[str]]:
    """build.json's {train, validation, heldout} feature lists."""
    build = read_build(folder)
    if build is None:
        raise FileNotFoundError(f"{Path(folder) / BUILD}: missing (a dataset folder's build record)")
    return build.splits


def training_features(folder: str | Path) -> dict[str, str]:
    """Every feature a dataset folder offers for training -> where it was found (build.json's splits
    and the `feature` column of every train/validation Parquet file)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    seen: dict[str, str] = {}
    build = folder / BUILD
    if build.is_file():
        for split, keys in feature_splits(folder).items():
            if split in TRAINING_SPLITS:
                for key in keys:
                    seen.setdefault(key, f"{build} (splits.{split})")
    parquets = [folder / c / f"{s}.parquet" for c in CONFIGS for s in TRAINING_SPLITS]
    for path in (p for p in parquets if p.is_file()):
        for key in set(pq.read_table(path, columns=["feature"]).column("feature").to_pylist()):
            seen.setdefault(key, str(path))
    if not build.is_file() and not any(p.is_file() for p in parquets):
        raise FileNotFoundError(
            f"{folder}: not a neuroscribe dataset folder (no {BUILD}, no Parquet splits); "
            "cannot check which features were trained on"
        )
    return seen


def write_parquet_splits(
    folder: Path, rows: Mapping[str, Mapping[str, list[dict]]], features
) -> dict[str, dict[str, str]]:
    """`folder/<config>/<split>.parquet` for every non-empty split (load_dataset refuses an empty one),
    typed by `features(config)` (a `datasets.Features`); returns config -> split -> relative path."""
    from datasets import Dataset
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()  # one bar per tiny file is noise
    files: dict[str, dict[str, str]] = {}
    try:
        for config, splits in rows.items():
            for split, split_rows in splits.items():
                if split_rows:
                    rel = f"{config}/{split}.parquet"
                    (folder / config).mkdir(parents=True, exist_ok=True)
                    Dataset.from_list(split_rows, features=features(config)).to_parquet(str(folder / rel))
                    files.setdefault(config, {})[split] = rel
    finally:
        if not was_disabled:
            enable_progress_bars()
    return files


def write_dataset_folder(
    out: str | Path,
    fill: Callable[[Path], None],
    heldout: list[str],
    build: DatasetBuild,
    card: Callable[[Path], None],
    overwrite: bool = False,
) -> Path:
    """Build the folder aside (`fill(tmp)` writes the Parquet files), add heldout.txt, build.json and the
    card, then move it into place. A non-empty `out` is replaced only with `overwrite`."""
    out = Path(out)
    with sibling_lock(out):
        refuse_nonempty(out, overwrite)
        with building_folder(out) as tmp:
            fill(tmp)
            write_heldout(tmp / HELDOUT, heldout)
            write_json(tmp / BUILD, {k: v for k, v in asdict(build).items() if v is not None})
            card(tmp)
        return replace_folder(tmp, out, overwrite)
