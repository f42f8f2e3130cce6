"""The training run folder: written by `neuroscribe.train.{sft,dpo,simulator}`, read by publish and eval.

neuroscribe_run.json  kind (sft | dpo | simulator), base model, dataset folder (`dataset` as given,
                      `dataset_path` resolved when local), recipe and overrides (secrets redacted),
                      steps, metrics, data provenance; written last, so its presence means the run finished
neuroscribe_started.json  written before the first step: the fingerprint of every setting that changes
                      the weights (dataset content included) and the resolved dataset path; a rerun
                      resumes a checkpoint only under the same fingerprint
recipe.yaml           the recipe as parsed, secrets redacted
README.md             the model card
checkpoint-N/         Trainer checkpoints; one is complete once its trainer_state.json (written last)
                      parses
+ the weights, tokenizer and, for a simulator, simulator.json (`runs.simulator`)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from neuroscribe.runs.files import RunFileError, field, read_json, write_json, write_text

RUN_INFO = "neuroscribe_run.json"
STARTED = "neuroscribe_started.json"
TRAINER_STATE = "trainer_state.json"
RECIPE = "recipe.yaml"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's, in a LoRA run and its checkpoints
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def read_run_info(folder: str | Path) -> dict:
    return read_json(Path(folder) / RUN_INFO, "not a finished neuroscribe training run")


def write_run_info(folder: str | Path, info: dict) -> Path:
    return write_json(Path(folder) / RUN_INFO, info)


def is_finished(folder: str | Path) -> bool:
    return (Path(folder) / RUN_INFO).is_file()


def write_started(folder: str | Path, started: dict) -> Path:
    return write_json(Path(folder) / STARTED, started)


def read_started(folder: str | Path) -> dict | None:
    path = Path(folder) / STARTED
    return read_json(path) if path.is_file() else None


def run_root(folder: str | Path) -> Path | None:
    """The training run a model folder belongs to: itself, or for `RUN/checkpoint-N` the run holding
    it; None when neither carries a run file (a model neuroscribe did not train)."""
    folder = Path(folder)
    for candidate in (folder, folder.parent) if _CHECKPOINT.match(folder.name) else (folder,):
        if (candidate / RUN_INFO).is_file() or (candidate / STARTED).is_file():
            return candidate
    return None


def looks_trained(folder: str | Path) -> bool:
    """A Trainer output or checkpoint (it has a trainer state): something a training run wrote."""
    folder = Path(folder)
    return (folder / TRAINER_STATE).is_file() or bool(_CHECKPOINT.match(folder.name))


def _dataset_dir(record: dict, where: Path) -> Path | None:
    """The local dataset folder a run file names (None: a Hub dataset). `dataset_path` is resolved at
    training time; an older file with only a relative `dataset` is refused where it does not resolve,
    so a leak check never silently reads nothing."""
    if record.get("dataset_path"):
        path = Path(record["dataset_path"])
        if not path.is_dir():
            raise RunFileError(
                f"{where}: field dataset_path {path} is not a folder any more; cannot check what the run was trained on"
            )
        return path
    dataset = record.get("dataset")
    if not dataset:
        return None
    path = Path(dataset)
    if path.is_dir():
        return path
    if not path.is_absolute() and (dataset.startswith(".") or len(path.parts) > 2):
        raise RunFileError(
            f"{where}: field dataset {dataset!r} is a relative path that does not resolve from "
            f"{Path.cwd()}; run eval from the training's working directory"
        )
    return None  # a Hub id


def trained_on(folder: str | Path, _depth: int = 0) -> list[Path]:
    """Every local dataset folder the model in `folder` was trained on: its own run's (finished or
    resumed from a checkpoint) and, through a base model that is itself a neuroscribe run (SFT, merged,
    then DPO), each earlier one's."""
    root = run_root(folder)
    if root is None or _depth > 8:
        return []
    record = read_run_info(root) if is_finished(root) else read_started(root) or {}
    where = root / (RUN_INFO if is_finished(root) else STARTED)
    found = [p for p in [_dataset_dir(record, where)] if p is not None]
    base = record.get("base_model_dir") or record.get("base_model")
    if base and Path(base).is_dir() and Path(base).resolve() != root.resolve():
        found += trained_on(base, _depth + 1)
    return found


def is_complete_checkpoint(path: Path) -> bool:
    try:
        json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return True


def loss_curve(folder: str | Path) -> list[list[float]] | None:
    """[step, loss] of every logged training step in a run's trainer_state.json (None: no state file)."""
    path = Path(folder) / TRAINER_STATE
    if not path.is_file():
        return None
    log = read_json(path, "a Trainer state").get("log_history", [])
    if not isinstance(log, list):
        raise RunFileError(f"{path}: field log_history must be a list, got {type(log).__name__}")
    return [[e["step"], e["loss"]] for e in log if isinstance(e, dict) and "loss" in e and "step" in e]


def adapter_base(folder: str | Path) -> str:
    """The base model a PEFT adapter folder names (its adapter_config.json's base_model_name_or_path)."""
    path = Path(folder) / ADAPTER_CONFIG
    return field(read_json(path, "a PEFT adapter's config"), "base_model_name_or_path", path, str)


def set_adapter_base(folder: str | Path, base: str) -> Path:
    """Point a copied adapter at `base` (publish: the name the Hub knows, not a local cache path)."""
    path = Path(folder) / ADAPTER_CONFIG
    return write_json(path, {**read_json(path, "a PEFT adapter's config"), "base_model_name_or_path": base})


def write_recipe(folder: str | Path, text: str) -> Path:
    """recipe.yaml of a run (or of the repo folder publish uploads): the recipe as parsed, secrets redacted."""
    return write_text(Path(folder) / RECIPE, text)


def has_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def has_model(folder: str | Path) -> bool:
    """A full transformers model folder (`publish --merge` output): its config.json is there."""
    return (Path(folder) / "config.json").is_file()


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest `checkpoint-N` whose save finished; a save cut off mid-way is passed over."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    for _, path in sorted(found, reverse=True):
        if is_complete_checkpoint(path):
            return path
    return None
