"""explain: Best-of-k. A teacher writes k candidate explanations per feature from its explain split;
each distinct candidate is scored by a simulator on the held-out `score` split; every candidate is
kept with its score (the preference dataset wants the losers too).

Output folder:
  meta.json         store, teacher, simulator, prompt style/version, k, split, sampling, counts
  candidates.jsonl  one `to_json(ScoredExplanation)` per line, in store feature order then sample index
  usage.json        LLM calls, cache hits, tokens and cost per stage for this run
  parts/            per-rank progress (append-only JSONL); a rerun skips features already there

Every LLM call and every simulation goes through the sqlite cache (default OUT/cache.sqlite), so a
rerun or a resumed run makes no call twice. Under `accelerate launch`/torchrun, rank r takes every
W-th feature and rank 0 merges the parts into the same candidates.jsonl one process would write.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from neuroscribe.backends import load_backend
from neuroscribe.backends.base import ChatRequest, SamplingParams
from neuroscribe.cache import Cache
from neuroscribe.prompts import PROMPT_VERSION, explainer_messages, parse_explanation
from neuroscribe.records import Explanation, ScoredExplanation, from_json, to_json
from neuroscribe.simulators import cached_score, load_simulator
from neuroscribe.store import ExemplarStore
from neuroscribe.testing import kill_point

from .collect import _dist


@dataclass(frozen=True)
class ExplainConfig:
    store: str
    out: str
    teacher: str = "hf:smollm2-135m-instruct"
    simulator: str = "hf:smollm2-135m-instruct"
    k: int = 4
    prompt_style: str = "plain"
    max_exemplars: int = 20
    temperature: float = 1.0
    max_tokens: int = 60
    seed: int = 0
    split: str = "score"
    features: tuple[str, ...] = ()  # feature keys; empty = every live feature
    max_features: int | None = None
    batch_features: int = 8  # features whose k requests go to the teacher together
    cache: str | None = None  # default OUT/cache.sqlite
    dtype: str = "float32"  # of local (hf:) teacher and simulator weights; bfloat16 is 3-4x faster on AMX CPUs
    teacher_batch_size: int = 16
    detection: bool = False
    progress: bool = True


def _normalised(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def feature_keys(store: ExemplarStore, wanted: tuple[str, ...] = (), limit: int | None = None) -> list[str]:
    live = store.keys()
    if wanted:
        missing = [k for k in wanted if k not in set(store.keys(include_dead=True))]
        if missing:
            raise KeyError(f"{store.path}: no feature(s) {missing[:5]} in this store")
        dead = [k for k in wanted if k not in set(live)]
        if dead:
            raise ValueError(f"{store.path}: feature(s) {dead[:5]} are dead (never activate); nothing to explain")
        live = [k for k in live if k in set(wanted)]
    return live[:limit] if limit else live


def _read_parts(parts: Path) -> dict[str, list[dict]]:
    """Finished features from earlier runs: key -> candidate rows (a torn last line is ignored)."""
    done: dict[str, list[dict]] = {}
    for path in sorted(parts.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; its feature is redone
            done[row["feature"]] = row["candidates"]
    return done


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def explain(cfg: ExplainConfig) -> Path:
    out = Path(cfg.out)
    if (out / "candidates.jsonl").exists():
        raise FileExistsError(f"{out} already holds candidates.jsonl; choose another --out or delete it")
    if cfg.k < 1:
        raise ValueError(f"--k must be >= 1, got {cfg.k}")
    if cfg.split == "explain":
        raise ValueError("--split must be a held-out split (score or test), never explain")
    dist = _dist()
    store = ExemplarStore(cfg.store)
    keys = feature_keys(store, cfg.features, cfg.max_features)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    cache = Cache(cfg.cache or out / "cache.sqlite")
    done = _read_parts(parts)
    mine = [k for i, k in enumerate(keys) if i % dist.world == dist.rank and k not in done]
    teacher = _teacher(cfg.teacher, cache, cfg.dtype, cfg.teacher_batch_size)
    simulator = load_simulator(cfg.simulator, cache, dtype=cfg.dtype) if mine else None
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
    bar = tqdm(total=len(mine), desc=f"explain[rank {dist.rank}]", unit="feat", disable=not cfg.progress)
    finished = 0
    with open(parts / f"rank{dist.rank}.jsonl", "a") as sink:
        for chunk in _chunks(mine, cfg.batch_features):
            records = {k: store.get(k) for k in chunk}
            prompts = {k: explainer_messages(records[k], cfg.prompt_style, max_exemplars=cfg.max_exemplars) for k in chunk}
            requests = [ChatRequest(tuple(prompts[k]), params, sample_index=i) for k in chunk for i in range(cfg.k)]
            completions = teacher.generate(requests, stage="explain")
            for j, key in enumerate(chunk):
                candidates = _candidates(cfg, teacher.spec, key, completions[j * cfg.k : (j + 1) * cfg.k])
                scored = [_score(cfg, simulator, c, records[key], cache) for c in candidates]
                sink.write(json.dumps({"feature": key, "candidates": [to_json(s) for s in scored]}) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(1)
                finished += 1
                kill_point("NEUROSCRIBE_TEST_KILL_AFTER_FEATURES", finished)
    bar.close()
    dist.barrier()
    if dist.rank == 0:
        _merge(cfg, keys, _read_parts(parts), out, cache, teacher.spec)
    dist.barrier()
    return out


def _teacher(spec: str, cache: Cache, dtype: str = "float32", batch_size: int = 16):
    if spec.startswith("hf:"):
        from neuroscribe.models import load_shared

        return load_backend(spec, cache, stage="explain", loaded=load_shared(spec[3:], dtype), batch_size=batch_size)
    return load_backend(spec, cache, stage="explain")


def _candidates(cfg: ExplainConfig, teacher: str, key: str, completions) -> list[Explanation]:
    """Parsed candidates; exact duplicates (after normalising case/punctuation) are dropped."""
    seen: set[str] = set()
    out = []
    for i, c in enumerate(completions):
        parsed = parse_explanation(c.text)
        norm = _normalised(parsed.text)
        if parsed.ok and norm in seen:
            continue
        seen.add(norm)
        out.append(Explanation(feature=key, text=parsed.text, explainer=teacher, prompt_style=cfg.prompt_style,
                               prompt_version=PROMPT_VERSION, sample_index=i, raw=c.text, ok=parsed.ok,
                               error=parsed.error))
    return out


def _score(cfg: ExplainConfig, simulator, candidate: Explanation, record, cache) -> ScoredExplanation:
    scored = cached_score(simulator, candidate, record, cfg.split, cache)
    if cfg.detection and candidate.ok:
        from neuroscribe.simulator import detection_score, fuzzing_score

        scored = replace(scored, detection=detection_score(simulator, candidate, record, cfg.split),
                         fuzzing=fuzzing_score(simulator, candidate, record, cfg.split))
    return scored


def _merge(cfg: ExplainConfig, keys: list[str], done: dict[str, list[dict]], out: Path, cache: Cache, teacher: str):
    rows = [c for k in keys for c in sorted(done[k], key=lambda c: c["explanation"]["sample_index"])]
    tmp = out / "candidates.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = [r["score"] for r in rows if r["score"] is not None and not math.isnan(r["score"])]
    meta = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("out", "progress", "cache")},
        "teacher": teacher, "prompt_version": PROMPT_VERSION, "n_features": len(keys), "n_candidates": len(rows),
        "n_unparsed": sum(not r["explanation"]["ok"] for r in rows),
        "n_duplicates_dropped": len(keys) * cfg.k - len(rows),
        "mean_best_score": _mean([max((c["score"] for c in done[k] if _finite(c["score"])), default=math.nan) for k in keys]),
        "mean_score": _mean(scores),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    (out / "usage.json").write_text(json.dumps({s: asdict(u) for s, u in cache.stages().items()}, indent=2))
    os.replace(tmp, out / "candidates.jsonl")


def _finite(x) -> bool:
    return x is not None and not math.isnan(x)


def _mean(xs) -> float:
    xs = [x for x in xs if _finite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def read_candidates(folder: str | Path) -> list[ScoredExplanation]:
    path = Path(folder) / "candidates.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `neuroscribe explain` first")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            out.append(from_json(ScoredExplanation, json.loads(line)))
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{path}:{n}: not a scored candidate ({err})") from None
    return out
