"""score: score any explanations on a store's held-out exemplars with any simulator (`runs.score`).

Accepted explanation files:
- JSONL, one object per line: {"feature": "mlp/L3/12+", "explanation": "..."} (e.g. human-written),
  or neuroscribe candidates (`explain`'s candidates.jsonl; their old scores are replaced),
- OpenAI neuron-explainer explanation files (NeuronSimulationResults JSON, or a folder of them).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from neuroscribe import dist as distributed
from neuroscribe.cache import Cache
from neuroscribe.configs import ScoreConfig
from neuroscribe.interchange import import_explanations
from neuroscribe.interventions import InterventionScorer, mean_of
from neuroscribe.options import to_dict
from neuroscribe.progress import progress
from neuroscribe.records import STATUSES, Explanation, ScoredExplanation, from_json, to_json
from neuroscribe.runs import score as run_files
from neuroscribe.runs.files import OutputLock, fingerprint, guard_output, read_jsonl, refuse_existing
from neuroscribe.runs.store import ExemplarStore
from neuroscribe.scorers import FAILURE_SCORE, SCORING_VERSION, cached_score, headline, in_sample_features
from neuroscribe.simulators import load_simulator

# An explanation is a phrase or a few sentences (explain caps them at --max-tokens); a longer "explanation"
# (a pasted document, the wrong column) goes into every simulator prompt, once per exemplar, and a 10 MB
# one asks for gigabytes downstream: refused where it is read.
MAX_EXPLANATION_CHARS = 4000


def _check_length(text: str, where: str) -> None:
    if len(text) > MAX_EXPLANATION_CHARS:
        raise ValueError(
            f"{where}: explanation is {len(text):,} characters, longer than the {MAX_EXPLANATION_CHARS:,} an "
            "explanation may have (MAX_EXPLANATION_CHARS)"
        )


def read_explanations(path: str | Path) -> list[Explanation]:
    """Every explanation of a file (formats: module doc); one error naming file (and line) when it holds
    none, or one longer than MAX_EXPLANATION_CHARS."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"explanations file {path} does not exist")
    if path.is_dir() or path.suffix == ".json":
        out = import_explanations(path)
        for e in out:
            _check_length(e.text, f"{path} (feature {e.feature})")
    else:
        out = []
        for n, row in read_jsonl(path):
            if "explanation" in row and isinstance(row["explanation"], dict):
                e = from_json(ScoredExplanation, row).explanation
            elif isinstance(row.get("feature"), str) and isinstance(row.get("explanation"), str):
                e = Explanation(
                    row["feature"],
                    row["explanation"].strip(),
                    row.get("explainer", "file"),
                    prompt_style=row.get("prompt_style", "external"),
                )
            else:
                raise ValueError(f"{path}:{n}: needs string fields 'feature' and 'explanation'")
            _check_length(e.text, f"{path}:{n}")
            out.append(e)
    if not out:
        raise ValueError(f"{path}: holds no explanations; nothing to score")
    return out


def _configuration(cfg: ScoreConfig, store: ExemplarStore, simulator: str, items: list[Explanation]) -> str:
    """The fingerprint parts must carry: everything that changes a score, inputs by content."""
    skip = ("out", "cache", "limits", "overwrite", "progress", "explanations")
    settings = {k: v for k, v in to_dict(cfg).items() if k not in skip}
    return fingerprint(
        {**settings, "store": store.fingerprint, "simulator": simulator, "items": [to_json(e) for e in items]}
    )


def score(cfg: ScoreConfig) -> list[ScoredExplanation]:
    """Score every explanation; under `accelerate launch`/torchrun rank r takes every W-th one and rank 0
    merges the parts, in input order, into the same scored.jsonl one process writes."""
    out = Path(cfg.out)
    guard_output(out, {"--explanations": cfg.explanations, "--store": cfg.store, "--cache": cfg.cache})
    refuse_existing(out, run_files.SCORED, cfg.overwrite, "scored explanations")
    dist = distributed.current()
    store = ExemplarStore(cfg.store)
    if cfg.split is None:  # the store names its splits
        cfg = dataclasses.replace(cfg, split=store.split_names.select)
    items = read_explanations(cfg.explanations)
    unknown = sorted({e.feature for e in items} - set(store.keys(include_dead=True)))
    if unknown:
        raise KeyError(f"{cfg.explanations}: feature(s) {unknown[:5]} are not in the store {cfg.store}")
    # the cache is closed (and removed again if empty) on any exit
    with OutputLock(out, dist.rank), Cache(cfg.cache or out / "cache.sqlite") as db:
        sim = load_simulator(cfg.simulator, db, dtype=cfg.dtype, limits=cfg.limits)
        in_sample = in_sample_features(
            sim, [e.feature for e in items], cfg.allow_in_sample, f"score --simulator {cfg.simulator}"
        )
        configuration = _configuration(cfg, store, sim.spec, items)
        if dist.is_main:
            run_files.start_parts(out, configuration, cfg.overwrite)
        dist.barrier()
        rows = [
            {
                "index": i,
                "scored": to_json(
                    cached_score(
                        sim, e, store.get(e.feature), cfg.split, db, target=cfg.target, in_sample=e.feature in in_sample
                    )
                ),
            }
            for i, e in progress(
                dist.mine(list(enumerate(items))),
                desc=f"score[rank {dist.rank}]",
                unit="expl",
                disable=not cfg.progress,
            )
        ]
        run_files.write_part(out, dist.rank, dist.world, configuration, rows)
        dist.barrier()
        if dist.is_main:
            ordered = [r["scored"] for r in run_files.read_parts(out, dist.world, configuration, len(items))]
            scored = [from_json(ScoredExplanation, r) for r in ordered]
            values = [v for v in (headline(s) for s in scored) if v is not None]
            statuses = {st: sum(s.status == st for s in scored) for st in STATUSES}
            summary = {
                "config": to_dict(cfg),
                "n": len(ordered),
                "statuses": statuses,
                "n_nan": sum(math.isnan(s.score) for s in scored),
                "n_in_sample": len(in_sample),
                "mean_score": sum(values) / len(values) if values else math.nan,
                "mean_convention": f"unparsed and undefined count as {FAILURE_SCORE}; insufficient features are "
                "left out",
                "simulator": sim.spec,
                "split": cfg.split,
                "target": cfg.target,
                "protocol": SCORING_VERSION,
                "sampling": store.protocol,
                "usage": {k: v.__dict__ for k, v in db.stages().items()},
            }
            interventions = None
            if cfg.intervention:
                from dataclasses import asdict

                scorer = InterventionScorer(store, cfg.judge, cfg.steer, cfg.dtype)
                found = [
                    scorer.score(store.get(e.feature), e.text)
                    for e in progress(items, desc="intervention", unit="expl", disable=not cfg.progress)
                ]
                interventions = [
                    {"feature": e.feature, "explanation": e.text, **asdict(s)} for e, s in zip(items, found)
                ]
                summary["intervention"] = {"judge": scorer.judge_spec, "steer": cfg.steer, **mean_of(found)}
            run_files.write_run(out, ordered, summary, interventions)
        dist.barrier()
    return run_files.read_scored(out)
