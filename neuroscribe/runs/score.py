"""The score run folder: written by `neuroscribe score`.

  scored.jsonl   one `to_json(ScoredExplanation)` per input explanation, in input order (written last)
  interventions.jsonl  (with --intervention) one `InterventionScore` per input explanation, same order
  summary.json   the ScoreConfig, simulator spec, split, counts, mean score (failures counted), usage
  parts/rank{r}.json  per-rank results before rank 0 merges them: {configuration, rank, world, rows}, the
                      configuration being the fingerprint of the settings, simulator, store and inputs

Parts are never resumed (a rerun recomputes through the cache), so they must never be mixed either:
rank 0 discards leftovers of the same configuration (a killed run, another world size), refuses those
of another configuration unless --overwrite, and the merge reads exactly ranks 0..W-1 of this run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from neuroscribe.records import ScoredExplanation, from_json
from neuroscribe.runs.files import RunFileError, field, read_json, read_jsonl, strict, write_json, write_text

SCORED, SUMMARY, PARTS, INTERVENTIONS = "scored.jsonl", "summary.json", "parts", "interventions.jsonl"


def start_parts(folder: Path, configuration: str, overwrite: bool) -> Path:
    """An empty parts folder (rank 0, before any rank writes): leftovers of a killed run of the same
    configuration are discarded, those of another configuration refused unless `overwrite`."""
    parts = folder / PARTS
    if parts.exists():
        foreign = [p for p in sorted(parts.glob("rank*.json")) if _configuration_of(p) != configuration]
        if foreign and not overwrite:
            raise FileExistsError(
                f"{foreign[0]} is a part of a different score configuration (this run {configuration}); pass "
                "--overwrite to discard it, or use another --out"
            )
        shutil.rmtree(parts)  # never merged: a rerun recomputes everything through the cache
    parts.mkdir(parents=True)
    return parts


def _configuration_of(part: Path) -> str | None:
    try:
        data = json.loads(part.read_text())
    except (OSError, ValueError):
        return None  # torn or unreadable: not this configuration's
    return data.get("configuration") if isinstance(data, dict) else None


def write_part(folder: Path, rank: int, world: int, configuration: str, rows: list[dict]) -> None:
    part = {"configuration": configuration, "rank": rank, "world": world, "rows": rows}
    write_text(folder / PARTS / f"rank{rank}.json", json.dumps(part))


def read_parts(folder: Path, world: int, configuration: str, n_inputs: int) -> list[dict]:
    """Rows of ranks 0..world-1 of this run, in input order; a missing or foreign part, or rows that do
    not cover the inputs exactly once, is one error naming the file."""
    rows = []
    for rank in range(world):
        path = folder / PARTS / f"rank{rank}.json"
        part = read_json(path, f"rank {rank} of {world} wrote no part")
        if (part.get("configuration"), part.get("world")) != (configuration, world):
            raise RunFileError(
                f"{path}: a part of another run (configuration {part.get('configuration')}, world "
                f"{part.get('world')}; this run {configuration}, world {world})"
            )
        rows += field(part, "rows", path, list)
    if sorted(r["index"] for r in rows) != list(range(n_inputs)):
        raise RunFileError(f"{folder / PARTS}: {len(rows)} scored rows for {n_inputs} input explanations")
    return sorted(rows, key=lambda r: r["index"])


def write_run(folder: Path, scored: list[dict], summary: dict, interventions: list[dict] | None = None) -> None:
    write_json(folder / SUMMARY, summary)
    if interventions is not None:  # strict JSON: an undefined score is null
        write_text(folder / INTERVENTIONS, "".join(json.dumps(strict(r)) + "\n" for r in interventions))
    write_text(folder / SCORED, "".join(json.dumps(r) + "\n" for r in scored))


def read_summary(folder: str | Path) -> dict:
    return read_json(Path(folder) / SUMMARY, "expected the output folder of `neuroscribe score`")


def read_interventions(folder: str | Path) -> list[dict]:
    return [row for _, row in read_jsonl(Path(folder) / INTERVENTIONS)]


def read_scored(folder: str | Path) -> list[ScoredExplanation]:
    return [from_json(ScoredExplanation, row) for _, row in read_jsonl(Path(folder) / SCORED)]
