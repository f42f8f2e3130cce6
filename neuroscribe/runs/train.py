"""The training run folder: written by `neuroscribe.train.{sft,dpo,simulator}`, read by publish and eval.

  neuroscribe_run.json  kind (sft | dpo | simulator), base model, dataset folder, recipe and overrides
                        (secrets redacted), steps, metrics, data provenance; written last, so its
                        presence means the run finished
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

from neuroscribe.runs.files import read_json, write_json

RUN_INFO = "neuroscribe_run.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def read_run_info(folder: str | Path) -> dict:
    return read_json(Path(folder) / RUN_INFO, "not a finished neuroscribe training run")


def write_run_info(folder: str | Path, info: dict) -> Path:
    return write_json(Path(folder) / RUN_INFO, info)


def is_finished(folder: str | Path) -> bool:
    return (Path(folder) / RUN_INFO).is_file()


def trained_on(folder: str | Path) -> Path | None:
    """The local dataset folder a finished run says it was trained on (None: not a local folder)."""
    if not is_finished(folder):
        return None
    dataset = read_run_info(folder).get("dataset")
    path = Path(dataset) if dataset else None
    return path if path is not None and path.is_dir() else None


def is_complete_checkpoint(path: Path) -> bool:
    try:
        json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return True


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
