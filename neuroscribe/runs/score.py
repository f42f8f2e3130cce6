"""The score run folder: written by `neuroscribe score`.

  scored.jsonl   one `to_json(ScoredExplanation)` per input explanation, in input order (written last)
  interventions.jsonl  (with --intervention) one `InterventionScore` per input explanation, same order
  summary.json   the ScoreConfig, simulator spec, split, counts, mean score (failures counted), usage
  parts/config.json   the fingerprint (configuration, inputs, world size) the parts belong to
  parts/rank{r}.json  per-rank results before rank 0 merges them: {fingerprint, rank, world, rows}

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


def start_parts(folder: Path, configuration: str, world: int, overwrite: bool) -> Path:
    """An empty parts folder stamped with this run's configuration and world size (rank 0, before any
    rank writes); leftovers of the same configuration are discarded, another one's are refused."""
    parts, stamp = folder / PARTS, folder / PARTS / "config.json"
    if parts.exists():
        saved = read_json(stamp).get("configuration") if stamp.is_file() else None
        if saved != configuration and not overwrite:
            raise FileExistsError(
                f"{parts} holds parts of a different score configuration (fingerprint {saved}, this run "
                f"{configuration}); pass --overwrite to discard them, or use another --out"
            )
        shutil.rmtree(parts)  # a killed run's leftovers: recomputed from the cache, never merged
    parts.mkdir(parents=True)
    write_json(stamp, {"configuration": configuration, "world": world})
    return parts


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


def read_interventions(folder: str | Path) -> list[dict]:
    return [row for _, row in read_jsonl(Path(folder) / INTERVENTIONS)]


def read_scored(folder: str | Path) -> list[ScoredExplanation]:
    return [from_json(ScoredExplanation, row) for _, row in read_jsonl(Path(folder) / SCORED)]
