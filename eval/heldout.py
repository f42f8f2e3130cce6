"""Which features eval may use: only those no training split ever contained.

The held-out list comes from `distill build` (`heldout.txt`). Every dataset folder involved says what
training saw, twice over: `build.json`'s feature splits and the `feature` column of every
train/validation Parquet file. The folders checked are the one holding the features file, the one
named by `--datasets` (when another), and every one the student was trained on: its run's (a
checkpoint `RUN/checkpoint-N` is its run's; a resumed run has one configuration,
`neuroscribe_started.json`)
and its base model's when that is a neuroscribe run too (SFT -> merged -> DPO). A student folder that a
Trainer wrote but no neuroscribe run file describes is refused: nothing says what it saw. Validation
counts as seen: it steers training (eval loss, early stopping), so it is no held-out evidence.
"""

from __future__ import annotations

from pathlib import Path

from neuroscribe.runs.datasets import BUILD, heldout_file, read_heldout, training_features
from neuroscribe.runs.train import looks_trained, run_root, trained_on


class LeakageError(ValueError):
    """An eval feature was seen in training."""


def dataset_folders(features_file: Path, datasets: str | Path | None, student: str | None) -> list[Path]:
    """Every dataset folder the leak check reads, each once: the features file's own folder when it is
    a dataset folder, `--datasets`, and the folder the student says it was trained on."""
    candidates = [
        features_file.parent if is_dataset_folder(features_file.parent) else None,
        Path(datasets) if datasets else None,
        *student_datasets(student),
    ]
    out: list[Path] = []
    for folder in candidates:
        if folder is not None and folder.resolve() not in [f.resolve() for f in out]:
            out.append(folder)
    return out


def student_datasets(student: str | None) -> list[Path]:
    """The dataset folders a local student was trained on ([] for a model neuroscribe did not train)."""
    if not student or not Path(student).is_dir():
        return []
    if run_root(student) is None and looks_trained(student):
        raise LeakageError(
            f"{student}: a training output with no neuroscribe run file (neuroscribe_run.json or "
            "neuroscribe_started.json here or in its run folder), so nothing says which features it saw"
        )
    return trained_on(student)


def is_dataset_folder(folder: Path) -> bool:
    return (folder / BUILD).is_file() or any(folder.glob("*/train.parquet")) or any(folder.glob("*/validation.parquet"))


def heldout_features(features: str | Path, datasets: str | Path | None = None, student: str | None = None) -> list[str]:
    """The eval feature list, refused with a `LeakageError` naming every leaking feature and file."""
    path = heldout_file(features)
    keys = read_heldout(path)
    folders = dataset_folders(path, datasets, student)
    if not folders:
        raise FileNotFoundError(
            f"{path.parent}: not a neuroscribe dataset folder (no build.json, no Parquet "
            "splits), so nothing says the features are held out; point --datasets at the "
            "folder `distill build` wrote"
        )
    for folder in folders:
        seen = training_features(folder)
        leaking = [k for k in keys if k in seen]
        if leaking:
            where = "; ".join(f"{k} in {seen[k]}" for k in leaking[:10])
            raise LeakageError(
                f"{path}: {len(leaking)} of {len(keys)} eval feature(s) were in a training split: {where}"
                f"{' ...' if len(leaking) > 10 else ''}. Eval only uses features no training split contained"
            )
    return keys
