"""The demo folder (`neuroscribe demo`): the demo's own files, beside the stage folders it holds
(store/, scored/, sft/, ... each owned by its runs/ module).

  demo.json         {config: the DemoConfig as run, status: running | complete, and once complete
                    compute {dtype, threads}, stages [{stage, seconds, result}], total_seconds}
  plant.json        the planted store's build record (`eval.demo_data.build_store`)
  truth.jsonl       one {feature, explanation, rule, family} per planted feature: the true rule,
                    eval's `--reference` explainer
  heldout.txt       the demo's held-out features (the same format as a dataset folder's list)
  calibration.json  the judge's calibration on planted rules (`eval.calibration.calibrate`), read by
                    eval's `--calibration` and the validity gates

and, in the user cache, each demo simulator's `demo-settings.json` (what its folder name hashes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from neuroscribe.runs import datasets
from neuroscribe.runs.files import read_json, read_jsonl, write_json, write_text

DEMO, PLANT, TRUTH, HELDOUT, CALIBRATION = "demo.json", "plant.json", "truth.jsonl", "heldout.txt", "calibration.json"
SIMULATOR_SETTINGS = "demo-settings.json"


def read_demo(folder: str | Path) -> dict | None:
    path = Path(folder) / DEMO
    return read_json(path, "a demo folder's record") if path.is_file() else None


def write_demo(folder: str | Path, record: dict) -> Path:
    return write_json(Path(folder) / DEMO, record)


def read_plant(folder: str | Path) -> dict:
    return read_json(Path(folder) / PLANT, "the planted store's record: remove heldout.txt and rerun the demo")


def write_plant(folder: str | Path, record: dict) -> Path:
    return write_json(Path(folder) / PLANT, record)


def write_truth(folder: str | Path, rows: Iterable[dict]) -> Path:
    return write_text(Path(folder) / TRUTH, "".join(json.dumps(r) + "\n" for r in rows))


def read_truth(folder: str | Path) -> dict[str, dict]:
    """truth.jsonl by feature key."""
    return {row["feature"]: row for _, row in read_jsonl(Path(folder) / TRUTH)}


def write_heldout(folder: str | Path, keys: Iterable[str]) -> Path:
    return datasets.write_heldout(Path(folder) / HELDOUT, keys)


def heldout_list(folder: str | Path) -> Path:
    return Path(folder) / HELDOUT


def write_simulator_settings(folder: str | Path, settings: dict) -> Path:
    """demo-settings.json inside a demo simulator's cache folder: the settings its fingerprint hashes."""
    return write_json(Path(folder) / SIMULATOR_SETTINGS, settings)


def read_calibration(path: str | Path) -> dict:
    """calibration.json (or the demo folder holding it)."""
    path = Path(path)
    return read_json(path / CALIBRATION if path.is_dir() else path, "a judge calibration (`neuroscribe demo`)")


def write_calibration(folder: str | Path, calibration: dict) -> Path:
    return write_json(Path(folder) / CALIBRATION, calibration)


def log_file(folder: str | Path, name: str) -> Path:
    """logs/NAME.log of a demo folder (a stage run as a subprocess writes its output there)."""
    logs = Path(folder) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{name}.log"


def log_tail(path: str | Path, chars: int = 3000) -> str:
    return Path(path).read_text(errors="replace")[-chars:]
