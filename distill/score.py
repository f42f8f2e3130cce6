"""score: score any explanations on a store's held-out exemplars with any simulator.

Accepted explanation files:
- JSONL, one object per line: {"feature": "mlp/L3/12+", "explanation": "..."} (e.g. human-written),
  or neuroscribe candidates (`explain`'s candidates.jsonl; their old scores are replaced),
- OpenAI neuron-explainer explanation files (NeuronSimulationResults JSON, or a folder of them).
Writes OUT/scored.jsonl (one ScoredExplanation per line, input order) and OUT/summary.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from neuroscribe.cache import Cache
from neuroscribe.records import Explanation, ScoredExplanation, from_json, to_json
from neuroscribe.simulators import cached_score, load_simulator
from neuroscribe.store import ExemplarStore


def read_explanations(path: str | Path) -> list[Explanation]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"explanations file {path} does not exist")
    if path.is_dir() or path.suffix == ".json":
        from neuroscribe.interchange import import_explanations

        return import_explanations(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
        if "explanation" in row and isinstance(row["explanation"], dict):
            out.append(from_json(ScoredExplanation, row).explanation)
        elif isinstance(row.get("feature"), str) and isinstance(row.get("explanation"), str):
            out.append(Explanation(row["feature"], row["explanation"].strip(), row.get("explainer", "file"),
                                   prompt_style=row.get("prompt_style", "external")))
        else:
            raise ValueError(f"{path}:{n}: needs string fields 'feature' and 'explanation'")
    return out


def score_file(explanations: str | Path, store: str | Path, simulator: str, out: str | Path, split: str = "score",
               cache: str | None = None, progress: bool = True) -> list[ScoredExplanation]:
    """Score every explanation; under `accelerate launch`/torchrun rank r takes every W-th one and rank 0
    merges the parts, in input order, into the same scored.jsonl one process writes."""
    from .collect import _dist

    out = Path(out)
    if (out / "scored.jsonl").exists():
        raise FileExistsError(f"{out}/scored.jsonl exists; choose another --out")
    dist = _dist()
    st = ExemplarStore(store)
    items = read_explanations(explanations)
    unknown = sorted({e.feature for e in items} - set(st.keys(include_dead=True)))
    if unknown:
        raise KeyError(f"{explanations}: feature(s) {unknown[:5]} are not in the store {store}")
    (out / "parts").mkdir(parents=True, exist_ok=True)
    db = Cache(cache or out / "cache.sqlite")
    sim = load_simulator(simulator, db)
    mine = [(i, e) for i, e in enumerate(items) if i % dist.world == dist.rank]
    rows = [{"index": i, "scored": to_json(cached_score(sim, e, st.get(e.feature), split, db))}
            for i, e in tqdm(mine, desc=f"score[rank {dist.rank}]", unit="expl", disable=not progress)]
    (out / "parts" / f"rank{dist.rank}.json").write_text(json.dumps(rows))
    dist.barrier()
    if dist.rank == 0:
        parts = [r for p in sorted((out / "parts").glob("rank*.json")) for r in json.loads(p.read_text())]
        ordered = [r["scored"] for r in sorted(parts, key=lambda r: r["index"])]
        (out / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ordered))
        finite = [r["score"] for r in ordered if r["score"] is not None and not math.isnan(r["score"])]
        summary = {"n": len(ordered), "n_nan": len(ordered) - len(finite),
                   "mean_score": sum(finite) / len(finite) if finite else math.nan, "simulator": sim.spec,
                   "split": split, "usage": {k: asdict(v) for k, v in db.stages().items()}}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dist.barrier()
    return [from_json(ScoredExplanation, json.loads(line)) for line in (out / "scored.jsonl").read_text().splitlines()]
