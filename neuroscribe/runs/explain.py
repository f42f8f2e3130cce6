"""The explain run folder: written by `neuroscribe explain`, read by distill, eval and `score`.

  meta.json         `ExplainMeta`: teacher and simulator specs, what selection read (k, split, prompt
                    style, exemplar count, temperature), the prompt and scoring versions, store
                    fingerprint, counts, `status` ("complete" | "partial"), `failed_features` {key: reason},
                    `servers` (per run that worked on it, {role: HTTP base URLs}; see parts/config.json)
                    and `config`, the ExplainConfig as run
  candidates.jsonl  one `to_json(ScoredExplanation)` per line, store feature order then sample index;
                    written last: its presence means the run finished (completely or partially)
  usage.json        LLM calls, cache hits, tokens and cost per stage for this run
  parts/config.json the fingerprint of the configuration the parts belong to, and `servers`: the HTTP
                    base URLs of every run that worked on these parts (a resumed run may mix servers)
  parts/rank{r}.jsonl  per-rank progress, one line per finished (or failed) feature, each with a `stamp`
                    (nanoseconds, increasing); a rerun of the same configuration skips finished features
                    and retries failed ones. Across files and runs the latest stamp wins, so a success
                    after an old failure (in another rank's file) counts. A line torn by a kill or a full
                    disk is cut off before the next append, and skipped by readers (at the end only).

Readers: `read_explain_run` (everything) and `read_parts` (resume). Writers: `PartsLog`, `write_run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from neuroscribe.records import ScoredExplanation, from_json
from neuroscribe.runs.files import RunFileError, disk_error, field, read_json, read_jsonl, write_json, write_text

META, CANDIDATES, USAGE, PARTS = "meta.json", "candidates.jsonl", "usage.json", "parts"
Status = Literal["complete", "partial"]


@dataclass(frozen=True)
class ExplainMeta:
    """meta.json of an explain run. The first seven fields are required (what distill and eval rebuild
    prompts and check splits from); the rest a finished run always writes."""

    store: str
    teacher: str
    simulator: str
    prompt_style: str
    prompt_version: str
    k: int
    split: str  # the split candidates were scored on: the one selection touched
    max_exemplars: int | None = None
    temperature: float | None = None
    status: Status = "complete"
    store_fingerprint: str | None = None
    subject_model: str | None = None
    fingerprint: str | None = None  # of the configuration (resume key)
    scoring_version: str | None = None  # scorers.SCORING_VERSION of the scores
    sampling: str | None = None  # the store's sampling protocol
    failed_features: dict[str, str] | None = None
    servers: list[dict] | None = None
    n_features: int = 0
    n_failed: int = 0
    n_candidates: int = 0
    n_unparsed: int = 0
    n_duplicates_dropped: int = 0
    mean_best_score_in_sample: float = float("nan")
    mean_score: float = float("nan")
    note: str = ""
    config: dict | None = None
    unrecorded: frozenset[str] = frozenset()  # optional fields the file lacks (a hand-written meta); not written

    def recorded(self, name: str) -> bool:
        """Whether the file states `name` (a None it states is a value: max_exemplars None means all)."""
        return name not in self.unrecorded

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "unrecorded"}

    @classmethod
    def from_json(cls, data: dict, where: Path) -> ExplainMeta:
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name in REQUIRED_META and f.name not in data]
        if missing:
            raise RunFileError(f"{where}: missing field(s) {missing}")
        if data.get("status", "complete") not in ("complete", "partial"):
            raise RunFileError(f"{where}: field status is {data['status']!r}, expected complete or partial")
        for name, kind in (("k", int), ("split", str), ("prompt_style", str), ("prompt_version", str)):
            field(data, name, where, kind)
        names.discard("unrecorded")
        return cls(**{k: v for k, v in data.items() if k in names}, unrecorded=frozenset(names - set(data)))


REQUIRED_META = ("store", "teacher", "simulator", "prompt_style", "prompt_version", "k", "split")


@dataclass(frozen=True)
class ExplainRun:
    """An explain run as read back: its meta and every candidate, grouped by feature key (store order)."""

    path: Path
    meta: ExplainMeta
    by_feature: dict[str, tuple[ScoredExplanation, ...]]

    @property
    def candidates(self) -> list[ScoredExplanation]:
        return [c for group in self.by_feature.values() for c in group]


def read_explain_run(folder: str | Path) -> ExplainRun:
    """Read and check an explain run; every problem names its file (and line, and field)."""
    path = Path(folder)
    meta = read_meta(path)
    cand_path = path / CANDIDATES
    if not cand_path.is_file():
        raise FileNotFoundError(f"{cand_path}: missing (the explain run in {path} did not finish; rerun it)")
    by_feature: dict[str, list[ScoredExplanation]] = {}
    for n, row in read_jsonl(cand_path):
        where = f"{cand_path}:{n}"
        try:
            cand = from_json(ScoredExplanation, row)
        except (TypeError, ValueError, KeyError) as err:
            raise RunFileError(f"{where}: not a scored candidate ({err})") from None
        if not isinstance(cand.explanation.feature, str) or not cand.explanation.feature:
            raise RunFileError(f"{where}: field explanation.feature must be a feature key")
        by_feature.setdefault(cand.explanation.feature, []).append(cand)
    return ExplainRun(path, meta, {k: tuple(v) for k, v in by_feature.items()})


def is_complete(folder: str | Path) -> bool:
    path = Path(folder)
    if not (path / CANDIDATES).is_file() or not (path / META).is_file():
        return False
    return read_meta(path).status == "complete"


# ------------------------------------------------------------------------------ progress


def start_parts(folder: Path, config_fingerprint: str, overwrite: bool, servers: dict | None = None) -> Path:
    """The parts folder for this configuration: earlier parts of the same configuration are resumed,
    parts of another one are refused (or, with `overwrite`, discarded). `servers` (role -> base URLs,
    no credentials) is added to those of earlier runs on these parts."""
    parts = folder / PARTS
    stamp = parts / "config.json"
    saved = read_json(stamp) if stamp.is_file() else {}
    if parts.exists() and saved.get("fingerprint") != config_fingerprint:
        if not overwrite:
            raise FileExistsError(
                f"{parts} holds progress of a different explain configuration (fingerprint "
                f"{saved.get('fingerprint')}, this run {config_fingerprint}); pass --overwrite to discard it, "
                "or use another --out"
            )
        shutil.rmtree(parts)
        saved = {}
    history = saved.get("servers", [])
    if servers and servers not in history:
        history = [*history, servers]
    parts.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"fingerprint": config_fingerprint, "servers": history})
    return parts


def parts_servers(folder: Path) -> list[dict]:
    """The servers of every run that worked on these parts (see `start_parts`)."""
    stamp = folder / PARTS / "config.json"
    return read_json(stamp).get("servers", []) if stamp.is_file() else []


def read_parts(folder: Path) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """(finished features -> candidate rows, failed features -> reason). The latest line wins, across
    every rank's file (by its stamp; unstamped lines of older versions first, in file order), so a
    feature that failed and was retried counts as finished. A torn last line is ignored."""
    lines = [
        (row.get("stamp", 0), row)
        for path in sorted((folder / PARTS).glob("rank*.jsonl"))
        for _, row in read_jsonl(path, torn_tail_ok=True)
    ]
    done: dict[str, list[dict]] = {}
    failed: dict[str, str] = {}
    for _, row in sorted(lines, key=lambda line: line[0]):  # stable: file order among equal stamps
        key = row["feature"]
        if row.get("error"):
            done.pop(key, None)
            failed[key] = row["error"]
        else:
            failed.pop(key, None)
            done[key] = row["candidates"]
    return done, failed


def cut_torn_tail(path: Path) -> None:
    """Drop an unfinished last line (no newline: a kill or a full disk mid-append), so the next append
    starts a line of its own instead of gluing itself to the torn one."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        try:
            os.truncate(path, data.rfind(b"\n") + 1)
        except OSError as err:
            raise disk_error(err, path) from None


class PartsLog:
    """Appends one stamped line per feature to this rank's part file, fsynced before returning; a torn
    tail left by an earlier run is cut first, and a failed append is undone."""

    def __init__(self, folder: Path, rank: int):
        self.path = folder / PARTS / f"rank{rank}.jsonl"
        cut_torn_tail(self.path)
        try:  # unbuffered: nothing is left in a buffer to be flushed after a failed append
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise disk_error(err, self.path) from None
        self._last = 0

    def finished(self, key: str, candidates: list[dict]) -> None:
        self._write({"feature": key, "candidates": candidates})

    def failed(self, key: str, reason: str) -> None:
        self._write({"feature": key, "error": reason, "candidates": []})

    def _stamp(self) -> int:
        # wall-clock nanoseconds order lines across ranks and runs; +1 keeps one file strictly increasing
        self._last = max(time.time_ns(), self._last + 1)
        return self._last

    def _write(self, row: dict) -> None:
        data = (json.dumps({**row, "stamp": self._stamp()}) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data) :]
            os.fsync(self._fd)
        except OSError as err:
            with contextlib.suppress(OSError):  # best effort: the next open cuts a torn line anyway
                os.ftruncate(self._fd, size)
            raise disk_error(err, self.path) from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> PartsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_run(folder: Path, rows: list[dict], meta: ExplainMeta, usage: dict) -> None:
    """meta.json, usage.json, then candidates.jsonl (the marker) — each atomically."""
    write_json(folder / META, meta.to_json(), allow_nan=True)
    write_json(folder / USAGE, usage)
    write_text(folder / CANDIDATES, "".join(json.dumps(r) + "\n" for r in rows))


def read_meta(folder: str | Path) -> ExplainMeta:
    """An explain run's meta.json, checked: its required fields and status."""
    path = Path(folder) / META
    return ExplainMeta.from_json(read_json(path, "expected the output folder of `neuroscribe explain`"), path)


def read_usage(folder: str | Path) -> dict:
    path = Path(folder) / USAGE
    return read_json(path) if path.is_file() else {}
