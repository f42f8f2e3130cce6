"""Which features eval may use: only those no training split ever contained.

The held-out list comes from `distill build` (`heldout.txt`); the datasets folder beside it (or the
one named) says what training saw, twice over: `build.json`'s feature splits, and the `feature`
column of every train/validation Parquet file. A student trained on another dataset folder (its
`neuroscribe_run.json` names it) is checked against that folder too. Validation counts as seen: it
steers training (eval loss, early stopping), so it is no held-out evidence.
"""

from __future__ import annotations

import json
from pathlib import Path

from neuroscribe.records import FeatureId

TRAINING_SPLITS = ("train", "validation")
DATASET_CONFIGS = ("sft", "chat", "preference")
RUN_INFO = "neuroscribe_run.json"  # written by the training entry points beside the weights


class LeakageError(ValueError):
    """An eval feature was seen in training."""


def resolve_feature_file(features: str | Path) -> Path:
    """A held-out list: the file itself, or `heldout.txt` inside a datasets folder."""
    path = Path(features)
    if path.is_dir():
        path = path / "heldout.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no held-out feature list "
                                "(expected `heldout.txt` from `neuroscribe distill build`)")
    return path


def read_feature_list(path: str | Path) -> list[str]:
    """Feature keys, one per line (blank lines and `#` comments skipped), duplicates dropped."""
    path = Path(path)
    keys: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            key = FeatureId.parse(text).key
        except ValueError as err:
            raise ValueError(f"{path}:{n}: {err}") from None
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ValueError(f"{path}: lists no features")
    return keys


def training_features(datasets_dir: str | Path) -> dict[str, str]:
    """Every feature a distill datasets folder offers for training -> where it was found."""
    folder = Path(datasets_dir)
    seen: dict[str, str] = {}
    build = folder / "build.json"
    if build.is_file():
        try:
            splits = json.loads(build.read_text())["splits"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{build}: field 'splits' is missing or unreadable ({err})") from None
        for split in TRAINING_SPLITS:
            for key in splits.get(split, []):
                seen.setdefault(key, f"{build} (splits.{split})")
    parquets = [folder / c / f"{s}.parquet" for c in DATASET_CONFIGS for s in TRAINING_SPLITS]
    for path in (p for p in parquets if p.is_file()):
        import pyarrow.parquet as pq

        for key in set(pq.read_table(path, columns=["feature"]).column("feature").to_pylist()):
            seen.setdefault(key, str(path))
    if not build.is_file() and not any(p.is_file() for p in parquets):
        raise FileNotFoundError(
            f"{folder}: not a distill datasets folder (no build.json, no sft/chat/preference Parquet); "
            "cannot check the features are held out. Point --datasets at the folder `distill build` wrote")
    return seen


def student_dataset(student: str) -> Path | None:
    """The local dataset folder a neuroscribe-trained student was trained on, when it says so."""
    info = Path(student) / RUN_INFO
    if not info.is_file():
        return None
    dataset = json.loads(info.read_text()).get("dataset")
    path = Path(dataset) if dataset else None
    return path if path is not None and path.is_dir() else None


def heldout_features(features: str | Path, datasets: str | Path | None = None, student: str | None = None) -> list[str]:
    """The eval feature list, refused with a `LeakageError` naming every leaking feature and file."""
    path = resolve_feature_file(features)
    keys = read_feature_list(path)
    folders = [Path(datasets) if datasets else path.parent]
    trained_on = student_dataset(student) if student else None
    if trained_on is not None and trained_on.resolve() != folders[0].resolve():
        folders.append(trained_on)
    for folder in folders:
        seen = training_features(folder)
        leaking = [k for k in keys if k in seen]
        if leaking:
            where = "; ".join(f"{k} in {seen[k]}" for k in leaking[:10])
            raise LeakageError(
                f"{path}: {len(leaking)} of {len(keys)} eval feature(s) were in a training split: {where}"
                f"{' ...' if len(leaking) > 10 else ''}. Eval only uses features no training split contained")
    return keys
