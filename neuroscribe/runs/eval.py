"""The eval folder: written by `neuroscribe eval`, read back by `rebuild_report` and `publish`.

  results.json     every explainer's explanation and score per held-out feature, and the statistics
                   (schema: `neuroscribe.eval.results`); strict JSON, an undefined score is null
  eval_table.md / eval_table.json   the table `publish --eval-results` puts in a model card
  report.md, plots/*.png, browser.html   the human-readable report
"""

from __future__ import annotations

from pathlib import Path

from neuroscribe.runs.files import RunFileError, read_json, write_json

RESULTS, TABLE_MD, TABLE_JSON, REPORT, BROWSER = "results.json", "eval_table.md", "eval_table.json", "report.md", "browser.html"
SCHEMA_VERSION = 2


def write_results(folder: str | Path, results: dict) -> Path:
    return write_json(Path(folder) / RESULTS, results)


def read_results(path: str | Path) -> dict:
    """results.json (or the folder holding it), checked for its schema version and top-level fields."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    data = read_json(path, "no eval results: run `neuroscribe eval` first")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise RunFileError(f"{path}: field schema_version is {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    for key in ("explainers", "features", "summary"):
        if key not in data:
            raise RunFileError(f"{path}: field {key!r} is missing")
    return data
