"""The `neuroscribe` command line. Each command is a thin wrapper: stage code lives in its package
and is imported inside the command, so `neuroscribe --help` stays fast and the core never imports
distill/train/eval at module level."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def collect(
    out: Path = typer.Option(..., "--out", help="Store folder to write."),
    model: str = typer.Option("smollm2-135m-instruct", help="HF id, local dir, .gguf file or bundled name."),
    features: List[str] = typer.Option(["mlp:0"], help="Feature spec, e.g. 'mlp:0-3', 'mlp:5:0-99', 'sae:DIR'. Repeatable."),
    dataset: str = typer.Option("builtin:python-docs", help="builtin:python-docs, a local text/jsonl/parquet/csv file or folder, or a hub id."),
    text_field: str = typer.Option("text", help="Text column of the dataset."),
    window: int = typer.Option(64, help="Tokens per window."),
    max_windows: int = typer.Option(1024, help="Stop after this many windows (0 = whole corpus)."),
    batch_size: int = typer.Option(16),
    shard_windows: int = typer.Option(256, help="Windows per checkpointed shard (resume granularity)."),
    dtype: str = typer.Option("float32", help="Subject dtype: float32, bfloat16, float16."),
    device: str = typer.Option("cpu"),
    polarity: str = typer.Option("auto", help="auto (MLP: both signs; SAE: positive), both, positive."),
    top_k: int = typer.Option(30, help="Top-activating windows per feature."),
    pool: int = typer.Option(64, help="Activating windows sampled for quantile exemplars."),
    quantiles: int = typer.Option(5),
    per_quantile: int = typer.Option(3),
    random_k: int = typer.Option(15, help="Uniformly random windows per feature."),
    hard_negatives: int = typer.Option(6, help="Windows with the feature's top tokens but low activation."),
    negative_ratio: float = typer.Option(0.1, help="A hard negative peaks at <= this fraction of the max."),
    splits: str = typer.Option("explain,score,test", help="Splits assigned by stride within each source."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="Replace an existing store."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Run a subject model over text and mine per-feature exemplars into a store."""
    from neuroscribe.distill.collect import CollectConfig, collect as run
    from neuroscribe.distill.mining import MiningConfig

    split_names = tuple(s.strip() for s in splits.split(",") if s.strip())
    if len(split_names) < 2 or len(set(split_names)) != len(split_names):
        _fail(f"--splits needs at least two distinct names (explain and a held-out one), got {splits!r}")
    mining = MiningConfig(top_k, pool, quantiles, per_quantile, random_k, hard_negatives, negative_ratio, split_names, seed)
    cfg = CollectConfig(
        out=str(out), model=model, features=tuple(features), dataset=dataset, text_field=text_field, window=window,
        max_windows=max_windows or None, batch_size=batch_size, shard_windows=shard_windows, dtype=dtype,
        device=device, polarity=polarity, mining=mining, overwrite=overwrite, progress=progress,
    )
    start = time.perf_counter()
    try:
        path = run(cfg)
    except (FileExistsError, FileNotFoundError, ValueError, KeyError, FloatingPointError) as err:
        _fail(str(err))
    from neuroscribe.store import ExemplarStore

    if int(os.environ.get("RANK", "0")) == 0:
        s = ExemplarStore(path).summary()
        typer.echo(f"wrote {path}: {s['features']} features ({s['dead']} dead), {s['exemplars']} exemplars "
                   f"from {s['windows_seen']} windows in {time.perf_counter() - start:.1f}s")


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="Store folder written by `collect`."),
    feature: Optional[str] = typer.Option(None, help="Show one feature's exemplars, e.g. 'mlp/L0/12+'."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Summarise a store: features, exemplar counts per split and source, dead features."""
    from neuroscribe.store import ExemplarStore, StoreError

    try:
        st = ExemplarStore(store)
    except StoreError as err:
        _fail(str(err))
    if feature:
        try:
            rec = st.get(feature)
        except KeyError as err:
            _fail(str(err.args[0]))
        typer.echo(f"{rec.feature.key}  max={rec.stats.max_activation:.3f}  dead={rec.dead}  top tokens={list(rec.top_tokens)}")
        for e in rec.exemplars:
            peak = max(range(len(e.activations)), key=e.activations.__getitem__)
            text = "".join(e.tokens).replace("\n", "⏎")
            typer.echo(f"  [{e.split:7s} {e.source:13s} w{e.window_id}] max={e.max_activation:7.3f} "
                       f"peak={e.tokens[peak]!r}: {text[:90]}")
        return
    s = st.summary()
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    typer.echo(f"store      {s['path']}\nmodel      {s['model']}\nwindows    {s['windows_seen']}")
    typer.echo(f"features   {s['features']} ({s['dead']} dead)  by layer: {s['features_by_layer']}")
    typer.echo(f"exemplars  {s['exemplars']}  by split: {s['by_split']}  by source: {s['by_source']}")
    if s["dead_features"]:
        shown = ", ".join(s["dead_features"][:10])
        typer.echo(f"dead       {shown}{' ...' if len(s['dead_features']) > 10 else ''}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run folder; a rerun reuses what is there."),
    model: str = typer.Option("smollm2-135m-instruct", help="Subject, teacher, simulator and student base."),
):
    """Run the whole loop on CPU with the bundled model and print where the report is."""
    from neuroscribe.eval.demo import run_demo

    run_demo(out, model)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
