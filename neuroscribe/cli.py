"""The `neuroscribe` command line, built from the stage configs (`neuroscribe.options`): every option,
default and help text is a field of a stage's config dataclass and exists only there.

Stage code is imported inside each command's runner, so `neuroscribe --help` stays fast and the core
never imports distill/train/eval at module level.

Exit codes: 0 done, 2 a clear error (one red line naming the file and field), 3 partial (some
features failed for good; rerunning the same command retries only those).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import typer

from neuroscribe.dist import launched_rank
from neuroscribe.options import command, fail

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="neuroscribe: train LLMs to explain neurons and SAE features of other LLMs.",
)
distill_app = typer.Typer(no_args_is_help=True, help="Build training datasets from scored candidates.")
app.add_typer(distill_app, name="distill")
PARTIAL = 3


_fail = fail


def _guard(fn, *args, **kwargs):
    """Run a stage; its expected errors become one red line and exit code 2."""
    from neuroscribe.backends import BackendError
    from neuroscribe.runs.files import OutputInUse

    try:
        return fn(*args, **kwargs)
    except KeyError as err:
        _fail(str(err.args[0]) if err.args else str(err))
    except (
        OSError,
        ValueError,
        ConnectionError,
        FloatingPointError,
        BackendError,
        OutputInUse,
        sqlite3.DatabaseError,
    ) as err:
        _fail(str(err))


def _main_rank() -> bool:
    return launched_rank() == 0


# ------------------------------------------------------------------------------ collect / inspect


def _collect(cfg) -> None:
    """Run a subject model over text and mine per-feature exemplars into a store."""
    from neuroscribe.distill.collect import collect
    from neuroscribe.runs.store import ExemplarStore

    start = time.perf_counter()
    path = _guard(collect, cfg)
    if _main_rank():
        s = ExemplarStore(path).summary()
        typer.echo(
            f"wrote {path}: {s['features']} features ({s['dead']} dead), {s['exemplars']} exemplars "
            f"from {s['windows_seen']} windows in {time.perf_counter() - start:.1f}s"
        )


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="Store folder written by `collect`."),
    feature: str | None = typer.Option(None, help="Show one feature's exemplars, e.g. 'mlp/L0/12+'."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Summarise a store: features, exemplar counts per split and source, dead features."""
    from neuroscribe.runs.store import ExemplarStore

    st = _guard(ExemplarStore, store)
    if feature:
        rec = _guard(st.get, feature)
        typer.echo(
            f"{rec.feature.key}  max={rec.stats.max_activation:.3f}  dead={rec.dead}  top tokens={list(rec.top_tokens)}"
        )
        for e in rec.exemplars:
            peak = max(range(len(e.activations)), key=e.activations.__getitem__)
            text = "".join(e.tokens).replace("\n", "⏎")
            typer.echo(
                f"  [{e.split:7s} {e.source:14s} w{e.window_id}] max={e.max_activation:7.3f} "
                f"peak={e.tokens[peak]!r}: {text[:90]}"
            )
        return
    s = _guard(st.summary)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    typer.echo(f"store      {s['path']}\nmodel      {s['model']}\nwindows    {s['windows_seen']}")
    typer.echo(f"protocol   {s['protocol']}")
    typer.echo(f"features   {s['features']} ({s['dead']} dead)  by layer: {s['features_by_layer']}")
    typer.echo(f"exemplars  {s['exemplars']}  by split: {s['by_split']}  by source: {s['by_source']}")
    if s["dead_features"]:
        shown = ", ".join(s["dead_features"][:10])
        typer.echo(f"dead       {shown}{' ...' if len(s['dead_features']) > 10 else ''}")
    short = ", ".join(f"{split} {len(keys)}" for split, keys in s["insufficient"].items())
    typer.echo(f"too few held-out exemplars to score (insufficient): {short or 'none'}")


# ------------------------------------------------------------------------------ explain / score


def _explain(cfg) -> None:
    """Best-of-k: a teacher explains each feature k times; every candidate is scored on held-out exemplars."""
    from neuroscribe.distill.explain import explain
    from neuroscribe.runs.explain import read_meta, read_usage

    path = _guard(explain, cfg)
    if not _main_rank():
        return
    meta, usage = read_meta(path), read_usage(path)
    typer.echo(
        f"wrote {path}/candidates.jsonl: {meta.n_candidates} candidates for {meta.n_features} "
        f"features, mean best score {meta.mean_best_score_in_sample:.3f} (in-sample: on the "
        f"`{meta.split}` split that selected them)"
    )
    for stage, u in usage.items():
        typer.echo(
            f"  {stage}: {u['calls']} calls, {u['cached_hits']} cached, {u['tokens_in']} tokens in, "
            f"{u['tokens_out']} out, ${u['usd']:.4f}"
        )
    if meta.status == "partial":
        typer.secho(
            f"partial: {meta.n_failed} of {meta.n_features} features failed; rerun the same command "
            "to retry only those:",
            fg=typer.colors.YELLOW,
            err=True,
        )
        for key, reason in list((meta.failed_features or {}).items())[:10]:
            typer.echo(f"  {key}: {reason[:200]}", err=True)
        raise typer.Exit(PARTIAL)


def _score(cfg) -> None:
    """Score any explanations on a store's held-out exemplars with a simulator."""
    from neuroscribe.distill.score import score
    from neuroscribe.runs.score import read_summary

    scored = _guard(score, cfg)
    if _main_rank():
        summary = read_summary(cfg.out)
        typer.echo(
            f"wrote {cfg.out}/scored.jsonl: {len(scored)} explanations, mean score "
            f"{summary['mean_score']:.3f} ({summary['n_nan']} NaN)"
        )


# ------------------------------------------------------------------------------ distill


def _distill_build(cfg) -> None:
    """SFT (winners), chat and preference datasets, split by unit, with a dataset card."""
    from neuroscribe.distill.datasets import build_command

    _guard(build_command, cfg, echo=typer.echo)


def _simulator_data(cfg) -> None:
    """Training rows for a fine-tuned simulator: (explanation, exemplar, per-token class)."""
    from neuroscribe.distill.simulator_data import simulator_data_command

    _guard(simulator_data_command, cfg, echo=typer.echo)


# ------------------------------------------------------------------------------ train / plan / publish


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context, kind: str = typer.Argument(..., help="sft, dpo or simulator.")):
    """Train with a recipe: `neuroscribe train sft --config FILE [--key value ...]` (as `trl sft` does).

    The same as `python -m neuroscribe.train.KIND ...`; under `accelerate launch -m neuroscribe.cli train ...`
    it runs on every rank."""
    import importlib

    from neuroscribe.configs import TRAIN_KINDS

    if kind not in TRAIN_KINDS:
        _fail(f"unknown training kind {kind!r}; choose one of {', '.join(TRAIN_KINDS)}")
    module = importlib.import_module(f"neuroscribe.train.{kind}")
    _guard(module.cli, list(ctx.args))


def _plan(cfg) -> None:
    """Plan a training run on paper: parameters, per-GPU memory, tokens per step, hours per epoch."""
    from neuroscribe.train.plan import plan_command

    _guard(plan_command, cfg, echo=typer.echo)


def _plan_workload(cfg) -> None:
    """GPU-hours of collect, explain, score and eval for every MLP neuron of a subject, on paper."""
    from neuroscribe.train.workload import workload_command

    _guard(workload_command, cfg, echo=typer.echo)


def _publish(cfg) -> None:
    """Weights + tokenizer + model card (with the eval table) to a folder or the Hugging Face Hub."""
    from neuroscribe.train.publish import publish_command

    _guard(publish_command, cfg, echo=typer.echo)


# ------------------------------------------------------------------------------ eval / demo


def _eval(cfg) -> None:
    """Student vs teacher vs baselines on held-out features: results.json, report.md, plots, HTML browser."""
    from neuroscribe.eval.benchmark import eval_command

    _guard(eval_command, cfg, echo=typer.echo)


def _demo(cfg) -> None:
    """Run the whole loop on CPU with the bundled model and print where the report is."""
    from neuroscribe.eval.demo import run_demo

    _guard(run_demo, cfg)


def _register() -> None:
    """Every config-built command (imports the config dataclasses only, not the stages' heavy code)."""
    from neuroscribe.configs import (
        CollectConfig,
        DemoConfig,
        DistillConfig,
        EvalConfig,
        ExplainConfig,
        PlanConfig,
        PublishConfig,
        ScoreConfig,
        SimulatorDataConfig,
        WorkloadConfig,
    )

    command(app, CollectConfig, _collect, name="collect")
    command(app, ExplainConfig, _explain, name="explain", rename={"prompt_style": "prompt", "features": "feature"})
    command(app, ScoreConfig, _score, name="score")
    command(distill_app, DistillConfig, _distill_build, name="build", rename={"max_pairs_per_feature": "max_pairs"})
    command(distill_app, SimulatorDataConfig, _simulator_data, name="simulator-data")
    command(app, PlanConfig, _plan, name="plan")
    command(app, WorkloadConfig, _plan_workload, name="plan-workload")
    command(app, PublishConfig, _publish, name="publish", positional=("run_dir",))
    command(app, EvalConfig, _eval, name="eval", rename={"simulators": "simulator", "training_runs": "training_run"})
    command(app, DemoConfig, _demo, name="demo")


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
