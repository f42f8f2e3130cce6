"""The simulator file of a trained simulator: `simulator.json` beside its weights (and in every
checkpoint), written by `neuroscribe.train.simulator`, read by `finetuned:PATH` and publish.

Fields: the `SimulatorFormat` (class ids and their vocabulary entries, header template, format
version, label rule, alignment, base model, run id) plus `trained_features` / `trained_splits`:
the features whose exemplars the simulator was trained on. explain, score and eval refuse to let it
score those features (or mark the output in-sample when explicitly allowed).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from neuroscribe.runs.files import RunFileError, read_json, write_json
from neuroscribe.simulators.finetuned_format import FORMAT_VERSION, HEADER_TEMPLATE, N_CLASSES, SimulatorFormat

SIMULATOR_FILE = "simulator.json"


def is_simulator(folder: str | Path) -> bool:
    return (Path(folder) / SIMULATOR_FILE).is_file()


def write_simulator_file(folder: str | Path, fmt: SimulatorFormat) -> Path:
    return write_json(Path(folder) / SIMULATOR_FILE, {**asdict(fmt), "n_classes": N_CLASSES})


def read_simulator_file(folder: str | Path) -> SimulatorFormat:
    path = Path(folder) / SIMULATOR_FILE
    data = read_json(path, f"{folder} is not a fine-tuned simulator (train one with `neuroscribe train simulator`)")
    data.pop("n_classes", None)
    if data.get("format_version") != FORMAT_VERSION or data.get("header_template") != HEADER_TEMPLATE:
        raise RunFileError(f"{path}: field format_version/header_template is {data.get('format_version')!r}; "
                           f"this neuroscribe reads {FORMAT_VERSION!r} with its own header")
    ids = data.get("class_token_ids")
    if not isinstance(ids, list) or len(set(ids)) != N_CLASSES or not all(isinstance(i, int) for i in ids):
        raise RunFileError(f"{path}: field class_token_ids must list {N_CLASSES} distinct integer ids, got {ids!r}")
    known = set(SimulatorFormat.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise RunFileError(f"{path}: unknown field(s) {unknown}")
    for name in ("class_tokens", "trained_features", "trained_splits"):
        data[name] = tuple(data.get(name, ()))
    data["class_token_ids"] = tuple(ids)
    return SimulatorFormat(**data)
