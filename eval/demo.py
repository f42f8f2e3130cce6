"""`neuroscribe demo`: the whole loop on CPU with the bundled SmolLM2-135M-Instruct as subject,
teacher, simulator and (LoRA) student:

collect -> explain (best-of-k) -> score on held-out exemplars -> SFT + preference datasets ->
SFT then DPO (the same entry points as the GPU recipes) -> eval on held-out features -> report.

Every stage writes under one run folder and is skipped when its output is already there; LLM calls
and simulations share one sqlite cache, so a rerun (or a resumed run) finishes much faster. The
time each stage took is printed at the end. The prompted 135M simulator is nearly flat, so the
demo shows the plumbing end to end, not explanation quality.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from neuroscribe.configs import DemoConfig

console = Console()


def recipes_dir() -> Path:
    """The shipped recipes: `recipes/` of a checkout, or the copy inside an installed wheel."""
    import neuroscribe.recipes as recipes  # a data-only package (pyproject maps it to recipes/)

    return Path(list(recipes.__path__)[0])


@dataclass
class StageTimer:
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        note = fn()
        self.rows.append((name, time.perf_counter() - start, note))
        console.print(f"[green]{name}[/green] done in {self.rows[-1][1]:.1f}s: {note}")

    def print(self) -> None:
        table = Table(title="neuroscribe demo")
        for col in ("stage", "seconds", "result"):
            table.add_column(col)
        for name, secs, note in self.rows:
            table.add_row(name, f"{secs:.1f}", note)
        table.add_row("total", f"{sum(r[1] for r in self.rows):.1f}", "")
        console.print(table)


def _run(cmd: list[str], log: Path) -> None:
    """A training/publishing step as users run it; its output goes to a log file."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "offline"}
    with open(log, "w") as sink:
        res = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {res.returncode}); log {log}:\n{tail}")


def run_demo(cfg: DemoConfig = DemoConfig()) -> Path:
    from neuroscribe.distill.collect import CollectConfig, collect
    from neuroscribe.distill.datasets import DistillConfig, build_datasets
    from neuroscribe.distill.explain import ExplainConfig, explain
    from neuroscribe.distill.mining import MiningConfig

    from neuroscribe.runs.datasets import read_heldout
    from neuroscribe.runs.store import ExemplarStore

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = recipes_dir()
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    store, scored, distill, cache = out / "store", out / "scored", out / "distill", out / "cache.sqlite"
    sft, merged, dpo, eval_dir = out / "sft", out / "sft-merged", out / "dpo", out / "eval"
    timer = StageTimer()

    def do_collect() -> str:
        if not (store / "meta.json").exists():
            collect(
                CollectConfig(
                    out=str(store),
                    model=cfg.model,
                    features=(cfg.features,),
                    window=32,
                    max_windows=cfg.windows,
                    mining=MiningConfig(top_k=12, per_quantile=2, random_k=6, hard_negatives=3),
                )
            )
        s = ExemplarStore(store).summary()
        return f"{s['features']} features ({s['dead']} dead), {s['exemplars']} exemplars"

    def do_explain() -> str:
        if not (scored / "candidates.jsonl").exists():
            spec = f"hf:{cfg.model}"
            explain(
                ExplainConfig(
                    store=str(store),
                    out=str(scored),
                    teacher=spec,
                    simulator=spec,
                    k=cfg.k,
                    prompt_style=cfg.prompt_style,
                    max_exemplars=cfg.max_exemplars,
                    max_tokens=40,
                    dtype=cfg.dtype,
                    cache=str(cache),
                )
            )
        import json

        meta = json.loads((scored / "meta.json").read_text())
        return (
            f"{meta['n_candidates']} candidates for {meta['n_features']} features, "
            f"mean best score {meta['mean_best_score_in_sample']:.3f} (in-sample: on the selection split)"
        )

    def do_distill() -> str:
        if not (distill / "heldout.txt").exists():
            build_datasets(
                DistillConfig(
                    str(scored),
                    str(distill),
                    threshold=-1.0,
                    min_margin=0.02,
                    heldout_fraction=0.25,
                    validation_fraction=0.1,
                )
            )
        held = read_heldout(distill)
        return f"datasets in {distill}, {len(held)} held-out features"

    def do_sft() -> str:
        if not (sft / "adapter_config.json").exists():
            _run(
                [
                    sys.executable,
                    "-m",
                    "neuroscribe.train.sft",
                    "--config",
                    str(recipes / "tiny/sft.yaml"),
                    "--model_name_or_path",
                    cfg.model,
                    "--dataset_name",
                    str(distill),
                    "--output_dir",
                    str(sft),
                    "--max_steps",
                    str(cfg.train_steps),
                    "--save_steps",
                    str(cfg.train_steps),
                    "--per_device_train_batch_size",
                    "1",
                ],
                logs / "sft.log",
            )
        if not (merged / "config.json").exists():
            _run(
                [sys.executable, "-m", "neuroscribe.cli", "publish", str(sft), "--merge", "--dry-run", str(merged)],
                logs / "merge.log",
            )
        return f"LoRA SFT {cfg.train_steps} steps -> {sft}, merged -> {merged}"

    def do_dpo() -> str:
        if not (dpo / "adapter_config.json").exists():
            _run(
                [
                    sys.executable,
                    "-m",
                    "neuroscribe.train.dpo",
                    "--config",
                    str(recipes / "tiny/dpo.yaml"),
                    "--model_name_or_path",
                    str(merged),
                    "--dataset_name",
                    str(distill),
                    "--output_dir",
                    str(dpo),
                    "--max_steps",
                    str(cfg.train_steps),
                    "--save_steps",
                    str(cfg.train_steps),
                    "--per_device_train_batch_size",
                    "1",
                ],
                logs / "dpo.log",
            )
        return f"LoRA DPO {cfg.train_steps} steps -> {dpo}"

    def do_eval() -> str:
        from neuroscribe.eval.benchmark import EvalConfig, evaluate

        from neuroscribe.runs.eval import read_results

        if (eval_dir / "results.json").exists():
            from neuroscribe.eval.results import fmt

            s = read_results(eval_dir)["summary"]
            return "reused: " + ", ".join(f"{name} {fmt(row['mean']['estimate'])}" for name, row in s.items())
        result = evaluate(
            EvalConfig(
                store=str(store),
                features=str(distill / "heldout.txt"),
                student=str(dpo),
                out=str(eval_dir),
                teacher_results=str(scored),
                simulator=f"hf:{cfg.model}",
                k=cfg.k,
                dtype=cfg.dtype,
                cache=str(cache),
            )
        )
        from neuroscribe.eval.results import fmt

        s = result.results["summary"]
        means = ", ".join(f"{name} {fmt(row['mean']['estimate'])}" for name, row in s.items())
        return f"mean held-out test score: {means}"

    timer.run("collect", do_collect)
    timer.run("explain + score", do_explain)
    timer.run("distill", do_distill)
    timer.run("train sft", do_sft)
    timer.run("train dpo", do_dpo)
    timer.run("eval + report", do_eval)
    timer.print()
    console.print(f"[bold]Report:[/bold] {eval_dir / 'report.md'}   [bold]Browser:[/bold] {eval_dir / 'browser.html'}")
    return out
