"""explain: Best-of-k. A teacher writes k candidate explanations per feature from its explain split;
each distinct candidate is scored by a simulator on the held-out `score` split; every candidate is
kept with its score (the preference dataset wants the losers too). Output: `runs.explain`.

Every LLM call and every simulation goes through the sqlite cache (default OUT/cache.sqlite), so a
rerun or a resumed run makes no call twice. Progress is kept per feature under OUT/parts/, keyed by
the fingerprint of the configuration: a rerun of the same command resumes, another configuration is
refused. A feature whose teacher or simulator calls fail for good (after retries) is recorded as
failed and the run goes on; the run then ends "partial" and a rerun retries only those features.
Under `accelerate launch`/torchrun, rank r takes every W-th feature and rank 0 merges the parts into
the same candidates.jsonl one process would write.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from neuroscribe import dist as distributed
from neuroscribe.backends import BackendError, BudgetExceeded, limit_budget, load_backend
from neuroscribe.backends.base import ChatRequest, SamplingParams
from neuroscribe.cache import Cache
from neuroscribe.configs import ExplainConfig
from neuroscribe.faults import EXPLAIN_FEATURES, kill_point
from neuroscribe.models import load_shared
from neuroscribe.options import to_dict
from neuroscribe.progress import progress
from neuroscribe.prompts import PROMPT_VERSION, explainer_messages, parse_explanation
from neuroscribe.protocols import protocol
from neuroscribe.records import Explanation, ScoredExplanation, best_candidate, from_json, to_json
from neuroscribe.runs import explain as run_files
from neuroscribe.runs.files import OutputLock, fingerprint, guard_output, refuse_existing
from neuroscribe.runs.store import ExemplarStore
from neuroscribe.scorers import SCORING_VERSION, cached_scores, in_sample_features, judge_scores
from neuroscribe.simulators import load_simulator
from neuroscribe.specs import Spec


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


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _drop_parts_without_progress(out: Path) -> None:
    """A run that failed before any feature was logged leaves no parts/ (and so, once the lock and the
    empty cache go, no folder); a parts/ holding any feature's line is kept for the rerun to resume."""
    parts = out / run_files.PARTS
    if not any(p.stat().st_size for p in parts.glob("rank*.jsonl")):
        shutil.rmtree(parts, ignore_errors=True)


def explain(cfg: ExplainConfig) -> Path:
    """Run best-of-k (module doc); returns the output folder (meta.json says complete or partial)."""
    out = Path(cfg.out)
    guard_output(out, {"--store": cfg.store, "--cache": cfg.cache})
    if run_files.is_complete(out):
        refuse_existing(out, run_files.CANDIDATES, cfg.overwrite, "a finished explain run")
    dist = distributed.current()
    store = ExemplarStore(cfg.store)
    if cfg.prompt_style is None:  # the store's protocol chooses (a graded style)
        cfg = replace(cfg, prompt_style=protocol(store.protocol).prompt_style)
    if cfg.split is None:  # the store names its splits: candidates are scored on the one that selects
        cfg = replace(cfg, split=store.split_names.select)
    keys = feature_keys(store, cfg.features, cfg.max_features)
    # the cache is closed (and removed again if empty) on any exit
    with OutputLock(out, dist.rank), Cache(cfg.cache or out / "cache.sqlite") as cache:
        budget = limit_budget(cfg.limits)  # one budget for every HTTP call of the run
        teacher = _teacher(cfg, cache, budget)
        simulator = load_simulator(cfg.simulator, cache, dtype=cfg.dtype, limits=cfg.limits, budget=budget)
        in_sample = in_sample_features(simulator, keys, cfg.allow_in_sample, f"explain --simulator {cfg.simulator}")
        key = fingerprint(
            {
                **cfg.resumable_fields(),
                "store": store.fingerprint,
                "simulator": simulator.spec,
                "teacher": teacher.spec,
                "prompt_version": PROMPT_VERSION,
                "protocol": SCORING_VERSION,
            }
        )
        if dist.is_main:
            if cfg.overwrite:  # the run being replaced stops looking finished before any new work lands
                for name in (run_files.CANDIDATES, run_files.META, run_files.USAGE):
                    (out / name).unlink(missing_ok=True)
            run_files.start_parts(out, key, cfg.overwrite, _servers(teacher, simulator))
        dist.barrier()
        done, _ = run_files.read_parts(out)
        mine = [k for k in dist.mine(keys) if k not in done]
        try:
            _explain_features(cfg, store, mine, teacher, simulator, cache, out, dist.rank, in_sample)
        except BaseException:
            if dist.is_main:
                _drop_parts_without_progress(out)
            raise
        dist.barrier()
        if dist.is_main:
            _merge(cfg, keys, out, cache, teacher.spec, simulator.spec, store, key)
        dist.barrier()
    return out


def _servers(teacher, simulator) -> dict[str, list[str]]:
    """Base URLs (no credentials) of the HTTP teacher and simulator: the cache keys on the model name, not
    the URL, so a resumed run may mix two servers' answers; the meta records every run's servers."""
    found = {"teacher": teacher, "simulator": getattr(simulator, "backend", None)}
    return {role: b.server_urls() for role, b in found.items() if hasattr(b, "server_urls")}


def _teacher(cfg: ExplainConfig, cache: Cache, budget):
    teacher = Spec.parse(cfg.teacher)
    if teacher.kind == "hf":
        return load_backend(
            teacher,
            cache,
            stage="explain",
            loaded=load_shared(teacher.model, cfg.dtype),
            batch_size=cfg.teacher_batch_size,
        )
    return load_backend(cfg.teacher, cache, cfg.limits, budget, stage="explain")


def _explain_features(
    cfg: ExplainConfig, store, keys: list[str], teacher, simulator, cache, out: Path, rank: int, in_sample: set[str]
) -> None:
    """Explain and score `keys`, one line per feature in this rank's part file (finished or failed)."""
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
    bar = progress(total=len(keys), desc=f"explain[rank {rank}]", unit="feat", disable=not cfg.progress)
    finished = 0
    with run_files.PartsLog(out, rank) as log:
        for chunk in _chunks(keys, cfg.batch_features):
            records = {k: store.get(k) for k in chunk}
            requests = [
                ChatRequest(
                    tuple(explainer_messages(records[k], cfg.prompt_style, max_exemplars=cfg.max_exemplars)),
                    params,
                    sample_index=i,
                )
                for k in chunk
                for i in range(cfg.k)
            ]
            try:
                completions = teacher.generate(requests, stage="explain", keep_failures=True)
            except BudgetExceeded as err:
                for k in keys[keys.index(chunk[0]) :]:
                    log.failed(k, f"not attempted: {err}")
                break
            for j, key in enumerate(chunk):
                mine = completions[j * cfg.k : (j + 1) * cfg.k]
                failed = next((c.error for c in mine if c.error), "")
                if failed:
                    log.failed(key, f"teacher: {failed}")
                else:
                    try:
                        candidates = _candidates(cfg, teacher.spec, key, mine)
                        scored = _score(cfg, simulator, candidates, records[key], cache, key in in_sample)
                        log.finished(key, [to_json(s) for s in scored])
                    except BackendError as err:  # an HTTP simulator gave up on this feature
                        log.failed(key, f"simulator: {err}")
                bar.update(1)
                finished += 1
                kill_point(EXPLAIN_FEATURES, finished)
    bar.close()


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
        out.append(
            Explanation(
                feature=key,
                text=parsed.text,
                explainer=teacher,
                prompt_style=cfg.prompt_style,
                prompt_version=PROMPT_VERSION,
                sample_index=i,
                raw=c.text,
                ok=parsed.ok,
                error=parsed.error,
            )
        )
    return out


def _score(
    cfg: ExplainConfig, simulator, candidates: list[Explanation], record, cache, in_sample: bool
) -> list[ScoredExplanation]:
    """A feature's candidates, simulated together (one batched call for a local simulator)."""
    scored = cached_scores(simulator, candidates, record, cfg.split, cache, target=cfg.target, in_sample=in_sample)
    if cfg.detection:
        scored = [
            replace(s, judges=judge_scores(simulator, c, record, cfg.split, cfg.seed, cfg.target)) if c.ok else s
            for s, c in zip(scored, candidates)
        ]
    return scored


def _merge(
    cfg: ExplainConfig,
    keys: list[str],
    out: Path,
    cache: Cache,
    teacher: str,
    simulator: str,
    store: ExemplarStore,
    key: str,
) -> None:
    done, failed = run_files.read_parts(out)
    failed = {k: failed.get(k, "not attempted") for k in keys if k not in done}
    rows = [c for k in keys if k in done for c in sorted(done[k], key=lambda c: c["explanation"]["sample_index"])]
    scores = [r["score"] for r in rows if _finite(r["score"])]
    best = []
    for k in keys:
        if k in done:
            winner = best_candidate([from_json(ScoredExplanation, c) for c in done[k]])
            best.append(winner.score if winner else math.nan)
    meta = run_files.ExplainMeta(
        store=cfg.store,
        teacher=teacher,
        simulator=simulator,
        prompt_style=cfg.prompt_style,
        prompt_version=PROMPT_VERSION,
        k=cfg.k,
        split=cfg.split,
        max_exemplars=cfg.max_exemplars,
        temperature=cfg.temperature,
        status="partial" if failed else "complete",
        store_fingerprint=store.fingerprint,
        subject_model=store.subject_model,
        fingerprint=key,
        scoring_version=SCORING_VERSION,
        sampling=store.protocol,
        failed_features=failed,
        servers=run_files.parts_servers(out),
        n_features=len(keys),
        n_failed=len(failed),
        n_candidates=len(rows),
        n_unparsed=sum(not r["explanation"]["ok"] for r in rows),
        n_duplicates_dropped=(len(keys) - len(failed)) * cfg.k - len(rows),
        mean_best_score_in_sample=_mean(best),
        mean_score=_mean(scores),
        note=f"scores are on the `{cfg.split}` split that selects winners: mean_best_score_in_sample is "
        "optimistic; report quality on a split no selection saw (eval uses `test`)",
        config=to_dict(cfg),
    )
    run_files.write_run(out, rows, meta, {s: u.__dict__ for s, u in cache.stages().items()})


def _finite(x) -> bool:
    return x is not None and not math.isnan(x)


def _mean(xs) -> float:
    xs = [x for x in xs if _finite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def read_candidates(folder: str | Path) -> list[ScoredExplanation]:
    """Every candidate of an explain run, in file order."""
    return run_files.read_explain_run(folder).candidates
