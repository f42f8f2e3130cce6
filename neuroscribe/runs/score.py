"""The score run folder: written by `neuroscribe score`.

  scored.jsonl   one `to_json(ScoredExplanation)` per input explanation, in input order (written last)
  interventions.jsonl  (with --intervention) one `InterventionScore` per input explanation, same order
  summary.json   the ScoreConfig, simulator spec, split, counts, mean score (failures counted), usage
  parts/rank{r}.json  per-rank results before rank 0 merges them
"""

from __future__ import annotations

import json
from pathlib import Path

from neuroscribe.records import ScoredExplanation, from_json
from neuroscribe.runs.files import read_jsonl, strict, write_json, write_text

SCORED, SUMMARY, PARTS, INTERVENTIONS = "scored.jsonl", "summary.json", "parts", "interventions.jsonl"


def write_part(folder: Path, rank: int, rows: list[dict]) -> None:
    (folder / PARTS).mkdir(parents=True, exist_ok=True)
    write_text(folder / PARTS / f"rank{rank}.json", json.dumps(rows))


def read_parts(folder: Path) -> list[dict]:
    return [r for p in sorted((folder / PARTS).glob("rank*.json")) for r in json.loads(p.read_text())]


def write_run(folder: Path, scored: list[dict], summary: dict, interventions: list[dict] | None = None) -> None:
    write_json(folder / SUMMARY, summary)
    if interventions is not None:  # strict JSON: an undefined score is null
        write_text(folder / INTERVENTIONS, "".join(json.dumps(strict(r)) + "\n" for r in interventions))
    write_text(folder / SCORED, "".join(json.dumps(r) + "\n" for r in scored))


def read_interventions(folder: str | Path) -> list[dict]:
    return [row for _, row in read_jsonl(Path(folder) / INTERVENTIONS)]


def read_scored(folder: str | Path) -> list[ScoredExplanation]:
    return [from_json(ScoredExplanation, row) for _, row in read_jsonl(Path(folder) / SCORED)]
