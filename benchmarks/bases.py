"""Are neurons (or an SAE's latents) more explainable than random, PCA and ICA directions?

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bases.py [--layer 6] [--n 8] [--sae PATH]
     [--teacher patterns:v1] [--simulator finetuned:PATH]

One `collect` over the same corpus windows reads, at one layer: N MLP neurons, N random, N PCA and N ICA
directions of the MLP hidden layer (`neuroscribe.bases`; fitted on the first windows), each in both
signs, and an SAE's first N latents when `--sae` is given. Every feature is explained by the same
teacher (best-of-k, selected on the `score` split) and its winner re-scored on `test` by the same
simulator. Printed per basis: mean test score with its 95% bootstrap interval, the null explanation's
mean (the simulator's prior) and the score minus the null, paired by feature, with its interval: the
number to compare across bases, since dense PCA/ICA directions get a higher null from the prior alone.
The default simulator is the demo's fine-tuned one when `neuroscribe demo` has trained it, else the
prompted bundled model (flat: expect little separation).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from neuroscribe.cache import Cache
from neuroscribe.configs import CollectConfig, ExplainConfig, MiningConfig
from neuroscribe.distill.collect import collect
from neuroscribe.distill.explain import explain
from neuroscribe.eval.stats import bootstrap_ci, paired_difference
from neuroscribe.models import DEFAULT_MODEL, cache_dir, warn_unless_one_thread
from neuroscribe.records import Explanation, FeatureId, best_candidate
from neuroscribe.runs.explain import is_complete, read_explain_run
from neuroscribe.runs.store import ExemplarStore, is_store
from neuroscribe.scorers import cached_scores
from neuroscribe.simulators import load_simulator


def default_simulator() -> str:
    runs = sorted((cache_dir() / "demo-simulators").glob("*/simulator.json"), key=lambda p: p.stat().st_mtime)
    return f"finetuned:{runs[-1].parent}" if runs else f"hf:{DEFAULT_MODEL}"


def basis_row(winner: list[float], null: list[float]) -> dict:
    """One basis's row: mean test score [95% CI], its null's mean, and score minus null paired by feature."""
    ci = bootstrap_ci(winner, "mean", n_resamples=2000, seed=0)
    gain = paired_difference(winner, null, n_resamples=2000, seed=0)
    return {
        "n": ci.n,
        "mean": ci.estimate,
        "low": ci.low,
        "high": ci.high,
        "null": bootstrap_ci(null, "mean", n_resamples=200, seed=0).estimate,
        "minus_null": gain.estimate,
        "minus_null_low": gain.low,
        "minus_null_high": gain.high,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--n", type=int, default=8, help="directions per basis (each in both signs)")
    ap.add_argument("--sae", default=None, help="an SAE folder at the same layer, to compare as well")
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--teacher", default="patterns:v1")
    ap.add_argument("--simulator", default=None)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warn_unless_one_thread()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-bases-"))
    n, layer = args.n, args.layer
    spec = [f"mlp:{layer}:0-{n - 1}", f"random:{layer}:{n}", f"pca:{layer}:{n}", f"ica:{layer}:{n}"]
    if args.sae:
        spec.append(f"sae:{args.sae}:0-{n - 1}")
    if not is_store(out / "store"):
        collect(
            CollectConfig(
                out=str(out / "store"),
                model=args.model,
                features=(";".join(spec),),
                window=24,
                max_windows=args.windows,
                polarity="both",
                mining=MiningConfig(top_k=12, per_quantile=1, random_k=12),
                progress=False,
            )
        )
    simulator = args.simulator or default_simulator()
    cache_path = out / "cache.sqlite"
    if not is_complete(out / "scored"):
        explain(
            ExplainConfig(
                store=str(out / "store"),
                out=str(out / "scored"),
                teacher=args.teacher,
                simulator=simulator,
                k=args.k,
                prompt_style="highlighted",
                max_exemplars=6,
                max_tokens=32,
                cache=str(cache_path),
                progress=False,
            )
        )
    store, run = ExemplarStore(out / "store"), read_explain_run(out / "scored")
    cache = Cache(cache_path)
    sim = load_simulator(simulator, cache)
    by_basis: dict[str, dict[str, list]] = {}
    for key, candidates in run.by_feature.items():
        record = store.get(key)
        winner = best_candidate(candidates) or candidates[0]
        null = Explanation(key, "", "baseline:null", prompt_style="baseline")
        test = cached_scores(sim, [winner.explanation, null], record, "test", cache)
        row = by_basis.setdefault(FeatureId.parse(key).kind, {"winner": [], "null": []})
        row["winner"].append(test[0].score if math.isfinite(test[0].score) else 0.0)  # a failure counts 0 (eval)
        row["null"].append(test[1].score if math.isfinite(test[1].score) else 0.0)
    cache.close()
    print(f"model {args.model}, layer {layer}, {n} directions per basis x 2 signs, {args.windows} windows")
    print(f"teacher {args.teacher} (best of {args.k} on `score`), simulator {simulator}; scores on `test`")
    print(f"{'basis':8} {'features':>8}  {'mean test score [95% CI]':28} {'null':>6}  {'minus null [95% CI]':24}")
    table = {}
    for basis in ("mlp", "random", "pca", "ica", "sae"):
        if basis not in by_basis:
            continue
        table[basis] = basis_row(by_basis[basis]["winner"], by_basis[basis]["null"])
        ci, null = table[basis], table[basis]["null"]
        print(
            f"{basis:8} {ci['n']:>8}  {ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]{'':8} {null:6.3f}"
            f"  {ci['minus_null']:+.3f} [{ci['minus_null_low']:+.3f}, {ci['minus_null_high']:+.3f}]"
        )
    (out / "bases.json").write_text(json.dumps(table, indent=1))
    print(f"(table in {out / 'bases.json'})")


if __name__ == "__main__":
    main()
