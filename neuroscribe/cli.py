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

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="neuroscribe: train LLMs to explain neurons and SAE features of other LLMs.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


_ERRORS = (FileExistsError, FileNotFoundError, ValueError, KeyError, ConnectionError, FloatingPointError)


def _guard(fn, *args, **kwargs):
    """Run a stage; its expected errors become one red line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except _ERRORS as err:
        _fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))


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
    path = _guard(run, cfg)
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
def explain(
    store: Path = typer.Option(..., help="Store folder written by `collect`."),
    out: Path = typer.Option(..., help="Output folder (candidates.jsonl, meta.json, usage.json)."),
    teacher: str = typer.Option("hf:smollm2-135m-instruct", help="hf:MODEL, openai:MODEL[@URL,...], anthropic:MODEL, vllm:MODEL."),
    simulator: str = typer.Option("hf:smollm2-135m-instruct", help="hf:MODEL, finetuned:PATH, openai:MODEL@URL, parsed:openai:MODEL@URL."),
    k: int = typer.Option(4, help="Candidates per feature (best-of-k)."),
    prompt: str = typer.Option("plain", help="Prompt style: plain, highlighted, contrastive."),
    temperature: float = typer.Option(1.0),
    max_tokens: int = typer.Option(60, help="Longest explanation, in tokens."),
    seed: int = typer.Option(0),
    split: str = typer.Option("score", help="Held-out split candidates are scored on."),
    feature: List[str] = typer.Option([], help="Only these feature keys (repeatable)."),
    max_features: int = typer.Option(0, help="At most this many features (0 = all live features)."),
    cache: Optional[Path] = typer.Option(None, help="sqlite cache of LLM calls and simulations (default OUT/cache.sqlite)."),
    detection: bool = typer.Option(False, help="Also compute detection and fuzzing balanced accuracy."),
    dtype: str = typer.Option("float32", help="dtype of local (hf:) teacher and simulator; bfloat16 is faster on AMX CPUs and GPUs."),
    max_exemplars: int = typer.Option(20, help="Exemplars shown to the teacher per feature."),
    progress: bool = typer.Option(True),
):
    """Best-of-k: a teacher explains each feature k times; every candidate is scored on held-out exemplars."""
    from neuroscribe.distill.explain import ExplainConfig, explain as run

    cfg = ExplainConfig(store=str(store), out=str(out), teacher=teacher, simulator=simulator, k=k,
                        prompt_style=prompt, temperature=temperature, max_tokens=max_tokens, seed=seed, split=split,
                        features=tuple(feature), max_features=max_features or None,
                        cache=str(cache) if cache else None, detection=detection, dtype=dtype,
                        max_exemplars=max_exemplars, progress=progress)
    path = _guard(run, cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        meta = json.loads((path / "meta.json").read_text())
        usage = json.loads((path / "usage.json").read_text())
        typer.echo(f"wrote {path}/candidates.jsonl: {meta['n_candidates']} candidates for {meta['n_features']} "
                   f"features, mean best score {meta['mean_best_score']:.3f}")
        for stage, u in usage.items():
            typer.echo(f"  {stage}: {u['calls']} calls, {u['cached_hits']} cached, {u['tokens_in']} tokens in, "
                       f"{u['tokens_out']} out, ${u['usd']:.4f}")


@app.command()
def score(
    explanations: Path = typer.Option(..., help="JSONL {feature, explanation}, candidates.jsonl, or OpenAI explanation JSON."),
    store: Path = typer.Option(..., help="Store folder written by `collect`."),
    simulator: str = typer.Option("hf:smollm2-135m-instruct"),
    out: Path = typer.Option(..., help="Output folder (scored.jsonl, summary.json)."),
    split: str = typer.Option("score", help="Held-out split to score on (score or test)."),
    cache: Optional[Path] = typer.Option(None),
    progress: bool = typer.Option(True),
):
    """Score any explanations on a store's held-out exemplars with a simulator."""
    from neuroscribe.distill.score import score_file

    scored = _guard(score_file, explanations, store, simulator, out, split, str(cache) if cache else None, progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    summary = json.loads((out / "summary.json").read_text())
    typer.echo(f"wrote {out}/scored.jsonl: {len(scored)} explanations, mean score {summary['mean_score']:.3f} "
               f"({summary['n_nan']} NaN)")


distill_app = typer.Typer(no_args_is_help=True, help="Build training datasets from scored candidates.")
app.add_typer(distill_app, name="distill")

@distill_app.command("build")
def distill_build(
    scored: Path = typer.Option(..., help="Folder written by `explain` (candidates.jsonl + meta.json)."),
    out: Path = typer.Option(..., help="Output folder for the SFT / chat / preference datasets."),
    threshold: float = typer.Option(0.3, help="A winner must score at least this."),
    min_margin: float = typer.Option(0.1, help="Chosen minus rejected score, at least."),
    max_pairs: int = typer.Option(4, help="Preference pairs per feature, at most."),
    augment: int = typer.Option(0, help="Extra prompts per training feature from shuffled exemplar subsets."),
    heldout_fraction: float = typer.Option(0.1, help="Features reserved for eval (never trained on)."),
    validation_fraction: float = typer.Option(0.1),
    heldout_file: Optional[Path] = typer.Option(None, help="Use this held-out feature list instead of drawing one."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False),
    push_to_hub: Optional[str] = typer.Option(None, help="Also push the datasets to this Hub repo."),
    private: bool = typer.Option(True, "--private/--public"),
):
    """SFT (winners), chat and preference datasets, split by feature, with a dataset card."""
    from neuroscribe.distill.datasets import build_command

    _guard(build_command, scored, out, threshold=threshold, min_margin=min_margin, max_pairs=max_pairs,
           augment=augment, heldout_fraction=heldout_fraction, validation_fraction=validation_fraction,
           heldout_file=heldout_file, seed=seed, overwrite=overwrite, push_to_hub=push_to_hub, private=private,
           echo=typer.echo)


@distill_app.command("simulator-data")
def distill_simulator_data(
    scored: Path = typer.Option(..., help="Folder written by `explain` (candidates.jsonl + meta.json)."),
    out: Path = typer.Option(..., help="Output folder: stage1/ (random candidates), stage2/ (best), heldout.txt."),
    random_per_exemplar: int = typer.Option(1, help="Stage-one candidates paired with each exemplar."),
    heldout_fraction: float = typer.Option(0.1, help="Features never trained on."),
    validation_fraction: float = typer.Option(0.1),
    heldout_file: Optional[Path] = typer.Option(None, help="A heldout.txt or a `distill build` folder to respect."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False),
):
    """Training rows for a fine-tuned simulator: (explanation, exemplar, per-token class)."""
    from neuroscribe.distill.simulator_data import simulator_data_command

    _guard(simulator_data_command, scored, out, random_per_exemplar=random_per_exemplar,
           heldout_fraction=heldout_fraction, validation_fraction=validation_fraction, heldout_file=heldout_file,
           seed=seed, overwrite=overwrite, echo=typer.echo)


@app.command()
def plan(
    config: Path = typer.Option(..., help="Training recipe YAML."),
    accelerate_config: Path = typer.Option(..., help="recipes/accelerate_configs/*.yaml"),
    gpus: int = typer.Option(8),
    gpu_mem: float = typer.Option(80.0, help="GB per GPU."),
    examples: int = typer.Option(10_000, help="Training examples per epoch."),
    tokens_per_example: Optional[int] = typer.Option(None, help="Default: the recipe's max_length."),
    mfu: float = typer.Option(0.4, help="Assumed model FLOP utilisation."),
    peak_tflops: float = typer.Option(989.0, help="Peak bf16 TFLOP/s per GPU (H100 SXM: 989)."),
    model_config: Optional[Path] = typer.Option(None, help="config.json of the model (default: shipped Llama-3.1-8B)."),
):
    """Plan a training run on paper: parameters, per-GPU memory, tokens per step, hours per epoch."""
    from neuroscribe.train.plan import plan_command

    _guard(plan_command, config, accelerate_config, gpus, gpu_mem, examples, tokens_per_example, mfu, peak_tflops,
           model_config, echo=typer.echo)


@app.command()
def publish(
    run_dir: Path = typer.Argument(..., help="Training output folder (adapter or full weights)."),
    repo: Optional[str] = typer.Option(None, help="Hub repo id to upload to (token from HF_TOKEN / login)."),
    dry_run: Optional[Path] = typer.Option(None, help="Only write the repo folder here."),
    merge: bool = typer.Option(False, help="Merge LoRA weights into the base model."),
    branch: str = typer.Option("main"),
    overwrite: bool = typer.Option(False, help="Allow replacing an existing branch / folder."),
    eval_results: Optional[Path] = typer.Option(None, help="eval results.json or a markdown table for the card."),
    recipe: Optional[Path] = typer.Option(None, help="Recipe YAML to ship beside the weights."),
    private: bool = typer.Option(True, "--private/--public"),
):
    """Weights + tokenizer + model card (with the eval table) to a folder or the Hugging Face Hub."""
    from neuroscribe.train.publish import publish_command

    if not repo and not dry_run:
        _fail("give --repo to upload or --dry-run DIR to write the folder only")
    _guard(publish_command, run_dir, repo=repo, dry_run=dry_run, merge=merge, branch=branch, overwrite=overwrite,
           eval_results=eval_results, recipe=recipe, private=private, echo=typer.echo)


@app.command("eval")
def eval_(
    store: Path = typer.Option(..., help="Store folder written by `collect`."),
    features: Path = typer.Option(..., help="heldout.txt or the `distill build` folder holding it."),
    student: str = typer.Option(..., help="HF id, model dir, LoRA adapter dir, or a backend spec."),
    out: Path = typer.Option(..., help="Output folder: results.json, report.md, plots/, browser.html."),
    teacher: Optional[str] = typer.Option(None, help="Teacher backend spec, to explain afresh."),
    teacher_results: Optional[Path] = typer.Option(None, help="An `explain` output folder (its candidates)."),
    simulator: str = typer.Option("hf:smollm2-135m-instruct"),
    datasets: Optional[Path] = typer.Option(None, help="Datasets folder for the leakage check (default: beside heldout.txt)."),
    k: int = typer.Option(4, help="Student samples for best-of-k (selected on `score`, reported on `test`)."),
    detection: bool = typer.Option(False, help="Also detection and fuzzing balanced accuracy."),
    dtype: str = typer.Option("float32", help="dtype of local student and simulator."),
    seed: int = typer.Option(0),
    cache: Optional[Path] = typer.Option(None),
    progress: bool = typer.Option(True),
):
    """Student vs teacher vs baselines on held-out features: results.json, report.md, plots, HTML browser."""
    from neuroscribe.eval.benchmark import eval_command

    if not teacher and not teacher_results:
        _fail("give --teacher SPEC or --teacher-results DIR")
    _guard(eval_command, echo=typer.echo, store=str(store), features=str(features), student=student, out=str(out),
           teacher=teacher, teacher_results=str(teacher_results) if teacher_results else None, simulator=simulator,
           datasets=str(datasets) if datasets else None, k=k, detection=detection, dtype=dtype, seed=seed,
           cache=str(cache) if cache else None, progress=progress)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run folder; a rerun reuses what is there."),
    model: str = typer.Option("smollm2-135m-instruct", help="Subject, teacher, simulator and student base."),
    features: str = typer.Option("mlp:4:0-9;mlp:18:0-9", help="Features to collect (20 neurons x 2 signs)."),
    k: int = typer.Option(4, help="Candidates per feature."),
    train_steps: int = typer.Option(4, help="SFT and DPO steps."),
):
    """Run the whole loop on CPU with the bundled model and print where the report is."""
    from neuroscribe.eval.demo import DemoConfig, run_demo

    _guard(run_demo, DemoConfig(out=out, model=model, features=features, k=k, train_steps=train_steps))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
