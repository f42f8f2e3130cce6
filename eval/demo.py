"""`neuroscribe demo`: the whole loop on a CPU with the bundled SmolLM2-135M-Instruct as subject,
simulator and LoRA student, on real neurons beside planted features whose answer is known. The
default teacher is `patterns:v1` (LLM-free templates over the marked tokens): the 135M model cannot
explain (the README says what that means for the numbers).

1. collect: real MLP neurons of SmolLM2 on the builtin corpus;
2. plant: planted features of the suite's explainer and held-out rules join the store
   (`eval.demo_data`); held out for the eval: every held-out planted rule and a few real neurons;
3. simulator: a fine-tuned simulator trained on the suite's simulator rules (once per configuration,
   reused from the user cache after that);
4. calibrate: how often each simulator scores a held-out rule's true explanation above wrong ones;
5. explain: the teacher writes k candidates per feature, the fine-tuned simulator picks the best;
6. distill: winners scoring >= `threshold` become the SFT set, held-out features excluded;
7. train: the student's LoRA SFT (and DPO when asked) through the recipes' entry points;
8. eval: student vs its base model vs teacher vs oracle and baselines on the held-out features,
   scored by the fine-tuned simulator and (on a subset) the prompted one; report, plots, browser.

Every stage writes under the run folder and is skipped when its output is there, and every LLM call
and simulation goes through one sqlite cache: a rerun reuses everything. Stage times are printed and
kept in `demo.json`.

Two lanes where it pays. Calibrate runs in its own process beside explain + score (one torch thread
each; two threads of one process mostly wait on each other), which on the 2-core machine the README
measured saves about a minute. Other overlaps did not pay there: training beside an eval slowed both
about 1.5x, so the rest runs in order. Each stage's own time is kept; the total is wall-clock.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from neuroscribe.configs import DemoConfig
from neuroscribe.options import to_dict
from neuroscribe.runs.files import read_json, write_json

console = Console()
DEMO_FILE = "demo.json"
JUDGED_ROWS = ("teacher", "student_best_of_1", "base_best_of_1", "reference")  # the prompted judge's rows


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

    def run_together(self, stages: list[tuple[str, Callable[[], str]]]) -> None:
        """Run independent stages at once, one torch thread each (module doc); rows in the given order."""
        import torch

        console.rule(f"[bold]{' | '.join(name for name, _ in stages)}  (at once)")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)

        def timed(fn: Callable[[], str]) -> tuple[float, str]:
            start = time.perf_counter()
            note = fn()
            return time.perf_counter() - start, note

        try:
            with ThreadPoolExecutor(len(stages)) as pool:
                futures = [pool.submit(timed, fn) for _, fn in stages]
                next(as_completed(futures))
                torch.set_num_threads(threads)  # one lane left: it may have the threads back
                results = [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)
        for (name, _), (secs, note) in zip(stages, results):
            self.rows.append((name, secs, note))
            console.print(f"[green]{name}[/green] done in {secs:.1f}s: {note}")

    def print(self, wall: float) -> None:
        table = Table(title="neuroscribe demo")
        for col in ("stage", "seconds", "result"):
            table.add_column(col)
        for name, secs, note in self.rows:
            table.add_row(name, f"{secs:.1f}", note)
        table.add_row("total (wall-clock; lanes overlap)", f"{wall:.1f}", "")
        console.print(table)


def _run(cmd: list[str], log: Path, threads: int) -> None:
    """A training step as users run it; its output goes to a log file."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    with open(log, "w") as sink:
        res = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {res.returncode}); log {log}:\n{tail}")


def _train(entry: str, recipe: Path, flags: dict[str, object], log: Path, threads: int) -> None:
    """`python -m neuroscribe.train.<entry> --config <recipe> --flag value ...` (None values left out)."""
    cmd = [sys.executable, "-m", f"neuroscribe.train.{entry}", "--config", str(recipe)]
    for name, value in flags.items():
        if value is not None:
            cmd += [f"--{name}", str(value)]
    _run(cmd, log, threads)


def train_simulator(cfg: DemoConfig, tok, rules: list, heldout: list[str], out: Path, threads: int) -> int:
    """Train the demo's fine-tuned simulator on `rules` (its data under `out`/simulator-data, its log in
    `out`/logs) into the user cache (`demo_data.simulator_cache`); `heldout` keys are refused as training
    rows. Returns the optimizer steps it took."""
    from neuroscribe.models import cache_dir

    from . import demo_data

    done, training = demo_data.simulator_cache(cache_dir(), cfg, rules)
    data, n_rows = demo_data.simulator_data(tok, rules, heldout, cfg, out / "simulator-data")
    steps = (
        math.ceil(cfg.simulator_epochs * n_rows / cfg.simulator_batch) if cfg.simulator_epochs else cfg.simulator_steps
    )
    flags = {
        "model_name_or_path": cfg.model,
        "dataset_name": data,
        "output_dir": training,
        "max_steps": steps,
        "learning_rate": cfg.simulator_lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "per_device_train_batch_size": cfg.simulator_batch,
        "save_steps": 20,
        "save_total_limit": 1,
        "logging_steps": 5,
        "seed": cfg.seed,
        "lora_layers": cfg.simulator_lora_layers,
    }
    (out / "logs").mkdir(parents=True, exist_ok=True)
    _train("simulator", recipes_dir() / "tiny/simulator.yaml", flags, out / "logs" / "simulator.log", threads)
    demo_data.finish_simulator(training, done, demo_data.simulator_settings(cfg, rules))
    return steps


def _check_config(out: Path, cfg: DemoConfig) -> dict:
    """A run folder holds one configuration: the first run records it in demo.json before any stage, and
    a rerun with other settings is refused, never mixed in."""
    path = out / DEMO_FILE
    want = {k: v for k, v in to_dict(cfg).items() if k != "out"}
    if path.exists():
        had = read_json(path).get("config", {})
        diff = sorted(k for k in want if k in had and had[k] != want[k])
        if diff:
            raise ValueError(
                f"{path}: field config differs from this run's ({', '.join(diff)}); use another --out or remove {out}"
            )
    else:
        write_json(path, {"config": want, "status": "running"})
    return want


# The proof configuration (`neuroscribe demo --proof`, issue 21): what the quick demo cannot afford in
# 15 minutes. Every field it sets is a DemoConfig field; its run folder is its own.
PROOF = {
    "out": "runs/proof",
    "larger_suite": True,
    "suite_fractions": (0.32, 0.13),
    "unseen_families": ("morphology", "shape"),
    "planted_explainer": 1000,
    "planted_heldout": 1000,
    "simulator_phrasings": "paraphrases",
    "simulator_others": 2,
    "simulator_per_rule": 6,
    "simulator_random": 2,
    "simulator_epochs": 2.0,
    "calibration_wrong": 2,
    "student_seeds": 3,
    "format_control": True,
    "primary": "student_vs_format_control",
    "judge_features": 0,
    "reliability_features": 12,
}


def proof_config(cfg: DemoConfig) -> DemoConfig:
    """`cfg` with PROOF applied (a field given by hand other than its default wins, `out` included)."""
    import dataclasses

    default = DemoConfig()
    return dataclasses.replace(
        cfg, **{k: v for k, v in PROOF.items() if getattr(cfg, k) == getattr(default, k)}, proof=True
    )


def _compute(cfg: DemoConfig) -> tuple[str, int]:
    import torch

    from neuroscribe.models import fastest_cpu_setup

    dtype, threads = fastest_cpu_setup() if cfg.dtype == "auto" else (cfg.dtype, cfg.threads or 1)
    threads = cfg.threads or threads
    torch.set_num_threads(threads)
    return dtype, threads


def run_demo(cfg: DemoConfig = DemoConfig(), only: str | None = None) -> Path:
    """Run every stage not done yet (module doc); `only` runs that one stage alone, at one thread (how a
    lane runs in its own process: `python -m neuroscribe.eval.demo OUT STAGE`)."""
    from neuroscribe.cache import Cache
    from neuroscribe.distill.collect import CollectConfig, collect
    from neuroscribe.distill.collect.mining import MiningConfig
    from neuroscribe.distill.datasets import DistillConfig, build_datasets
    from neuroscribe.distill.explain import ExplainConfig, explain
    from neuroscribe.models import cache_dir, load_tokenizer
    from neuroscribe.runs.datasets import read_heldout
    from neuroscribe.runs.store import ExemplarStore

    from . import demo_data

    if cfg.proof:
        cfg = proof_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = _check_config(out, cfg)
    dtype, threads = _compute(cfg)
    if only:
        import torch

        threads = 1
        torch.set_num_threads(1)
    measured = " (measured on this CPU)" if cfg.dtype == "auto" else ""
    console.print(f"compute: {dtype}, {threads} torch thread(s){measured}")
    recipes, logs = recipes_dir(), out / "logs"
    logs.mkdir(exist_ok=True)
    real, store, scored, distill = out / "real", out / "store", out / "scored", out / "distill"
    sft, cache_path, calibration = out / "sft", out / "cache.sqlite", out / "calibration.json"
    tok = load_tokenizer(cfg.model)
    parts = demo_data.planted_parts(cfg)
    sim_done, _ = demo_data.simulator_cache(cache_dir(), cfg, parts["simulator"])
    finetuned, prompted = f"finetuned:{sim_done}", f"hf:{cfg.model}"
    heldout_list = out / demo_data.HELDOUT_LIST
    timer = StageTimer()

    def do_collect() -> str:
        if not (real / "meta.json").exists():
            mining = MiningConfig(top_k=12, per_quantile=1, random_k=12)
            collect(
                CollectConfig(
                    out=str(real),
                    model=cfg.model,
                    features=(cfg.features,),
                    window=cfg.window,
                    max_windows=cfg.windows,
                    dtype=dtype,
                    mining=mining,
                )
            )
        s = ExemplarStore(real).summary()
        return f"{s['features']} real features ({s['dead']} dead), {s['exemplars']} exemplars"

    def do_plant() -> str:
        if not heldout_list.exists():
            write_json(out / "plant.json", demo_data.build_store(real, out, tok, parts, cfg))
        c = read_json(out / "plant.json")
        return (
            f"{c['planted_explainer']} planted training + {c['planted_heldout']} held-out planted features; "
            f"{c['heldout_real']} real features held out"
        )

    def do_simulator() -> str:
        if (sim_done / "simulator.json").exists():
            return f"reused {sim_done}"
        steps = train_simulator(cfg, tok, parts["simulator"], read_heldout(heldout_list), out, threads)
        return f"{len(parts['simulator'])} planted rules, {steps} steps -> {sim_done}"

    def do_calibrate() -> str:
        from neuroscribe.distill.planted.paraphrases import paraphrases
        from neuroscribe.simulators import load_simulator

        from .calibration import calibrate, headline

        if not calibration.exists():
            s, truth = ExemplarStore(store), demo_data.read_truth(out)
            by_name = {r.name: r for part in parts.values() for r in part}
            held = [k for k in read_heldout(heldout_list) if k in truth]
            cache = Cache(cache_path)
            try:
                sims = [load_simulator(spec, cache, dtype=dtype) for spec in (finetuned, prompted)]
                result = calibrate(
                    sims,
                    [s.get(k) for k in held],
                    [truth[k]["explanation"] for k in held],
                    [truth[k]["rule"] for k in held],
                    n_wrong=cfg.calibration_wrong,
                    seed=cfg.seed,
                    cache=cache,
                    limit={sims[1].spec: cfg.prompted_rules},
                    # the validity gates: near misses of the rule's own family, natural paraphrases
                    families=[truth[k]["family"] for k in held],
                    paraphrases_of=[paraphrases(by_name[truth[k]["rule"]]) for k in held],
                    trained_families=sorted({r.family for r in parts["simulator"]}),
                )
            finally:
                cache.close()
            write_json(calibration, result)
        return headline(read_json(calibration))

    def do_calibrate_apart() -> str:
        """The calibration in its own process: two threads of one process mostly wait on each other."""
        if not calibration.exists():
            _run([sys.executable, "-m", "neuroscribe.eval.demo", str(out), "calibrate"], logs / "calibrate.log", 1)
        return do_calibrate()

    def do_explain() -> str:
        if not (scored / "meta.json").exists() or read_json(scored / "meta.json").get("status") != "complete":
            explain(
                ExplainConfig(
                    store=str(store),
                    out=str(scored),
                    teacher=cfg.teacher,
                    simulator=finetuned,
                    k=cfg.k,
                    prompt_style=cfg.prompt_style,
                    max_exemplars=cfg.max_exemplars,
                    max_tokens=cfg.max_tokens,
                    dtype=dtype,
                    cache=str(cache_path),
                    seed=cfg.seed,
                )
            )
        meta = read_json(scored / "meta.json")
        return (
            f"{meta['n_candidates']} candidates for {meta['n_features']} features, mean best score "
            f"{meta['mean_best_score_in_sample']:.3f} (in-sample: the split that selected them)"
        )

    def do_distill() -> str:
        if not (distill / "build.json").exists():
            build_datasets(
                DistillConfig(
                    str(scored),
                    str(distill),
                    threshold=cfg.threshold,
                    min_margin=0.1,
                    heldout_file=str(heldout_list),
                    validation_fraction=0.1,
                    max_exemplars=cfg.max_exemplars,
                    seed=cfg.seed,
                )
            )
        build = read_json(distill / "build.json")
        rows, splits = build["rows"], build["splits"]
        return (
            f"{rows['sft']['train']} SFT / {rows['preference']['train']} preference training rows from "
            f"{len(splits['train'])} features; {len(splits['heldout'])} held out"
        )

    students = [sft, *(out / f"sft-s{i}" for i in range(1, cfg.student_seeds))]  # seed, seed + 1, ...
    control = out / "sft-control"

    def sft_stage(folder: Path, seed: int, config: str = "sft") -> Callable[[], str]:
        def do_sft() -> str:
            if not (folder / "adapter_config.json").exists():
                flags = {
                    "model_name_or_path": cfg.model,
                    "dataset_name": distill,
                    "dataset_config": config,
                    "output_dir": folder,
                    "max_steps": cfg.sft_steps,
                    "save_steps": cfg.sft_steps,
                    "per_device_train_batch_size": cfg.sft_batch,
                    "learning_rate": cfg.sft_lr,
                    "lr_scheduler_type": "cosine",
                    "warmup_steps": 0.1,
                    "logging_steps": 1,
                    "seed": seed,
                    "lora_layers": cfg.sft_lora_layers,
                }
                _train("sft", recipes / "tiny/sft.yaml", flags, logs / f"{folder.name}.log", threads)
            return f"LoRA SFT on {config}, {cfg.sft_steps} steps at lr {cfg.sft_lr}, seed {seed} -> {folder}"

        return do_sft

    def do_dpo() -> str:
        """DPO on the merged SFT student (the preference pairs of the same explain run)."""
        merged, dpo = out / "sft-merged", out / "dpo"
        pairs = read_json(distill / "build.json")["rows"]["preference"]["train"]
        if not pairs:
            return "skipped: the explain run gave no preference pair (no candidates differing by >= 0.1)"
        if not (merged / "config.json").exists():
            _run(
                [sys.executable, "-m", "neuroscribe.cli", "publish", str(sft), "--merge", "--dry-run", str(merged)],
                logs / "merge.log",
                threads,
            )
        if not (dpo / "adapter_config.json").exists():
            flags = {
                "model_name_or_path": merged,
                "dataset_name": distill,
                "output_dir": dpo,
                "max_steps": cfg.dpo_steps,
                "save_steps": cfg.dpo_steps,
                "per_device_train_batch_size": cfg.sft_batch,
                "learning_rate": cfg.sft_lr / 5,
                "lr_scheduler_type": "cosine",
                "logging_steps": 1,
                "seed": cfg.seed,
            }
            _train("dpo", recipes / "tiny/dpo.yaml", flags, logs / "dpo.log", threads)
        return f"LoRA DPO, {cfg.dpo_steps} steps on the merged SFT student -> {dpo}"

    def eval_config(student: str, folder: Path, runs: tuple[Path, ...]):
        from .benchmark import EvalConfig

        return EvalConfig(
            store=str(store),
            features=str(distill / "heldout.txt"),
            student=student,
            out=str(folder),
            teacher_results=str(scored),
            simulators=(finetuned, prompted),
            judged_rows=JUDGED_ROWS,
            judged_features=cfg.judge_features,
            reliability_features=cfg.reliability_features,
            base=cfg.model,
            reference=str(out / demo_data.TRUTH),
            reference_label="the planted rule",
            training_runs=tuple(map(str, runs)),
            calibration=str(calibration),
            control=str(control) if cfg.format_control else None,
            student_seeds=tuple(str(f) for f in students[1:]),
            primary=cfg.primary,
            k=1,
            dtype=dtype,
            max_tokens=cfg.max_tokens,
            cache=str(cache_path),
            seed=cfg.seed,
        )

    def eval_stage(student: Path, folder: Path, runs: tuple[Path, ...]) -> Callable[[], str]:
        def do_eval() -> str:
            from neuroscribe.runs.eval import read_results

            from .benchmark import evaluate
            from .report import answer

            if not (student / "adapter_config.json").exists():
                return f"skipped: no student at {student}"
            if not (folder / "results.json").exists():
                evaluate(eval_config(str(student), folder, runs))
            return answer(read_results(folder))

        return do_eval

    stages = [  # a list of stages runs them at once (module doc)
        ("collect", do_collect),
        ("plant", do_plant),
        ("train simulator", do_simulator),
        [("calibrate", do_calibrate_apart), ("explain + score", do_explain)],
        ("distill", do_distill),
        ("train student (SFT)", sft_stage(sft, cfg.seed)),
        *(
            (f"train student (SFT, seed {cfg.seed + i})", sft_stage(f, cfg.seed + i))
            for i, f in enumerate(students[1:], 1)
        ),
        *(
            [("train format control (SFT on shuffled winners)", sft_stage(control, cfg.seed, "sft_control"))]
            if cfg.format_control
            else []
        ),
        ("eval + report (SFT student)", eval_stage(sft, out / "eval", tuple(students))),
    ]
    if cfg.dpo_steps:
        stages += [
            ("train student (DPO)", do_dpo),
            ("eval + report (DPO student)", eval_stage(out / "dpo", out / "eval-dpo", (sft, out / "dpo"))),
        ]
    if only:
        named = {name: fn for s in stages for name, fn in (s if isinstance(s, list) else [s])}
        named["calibrate"] = do_calibrate  # the lane's process does the work itself
        named[only]()
        return out
    started = time.perf_counter()
    for stage in stages:
        if isinstance(stage, list):
            timer.run_together(stage)
        else:
            timer.run(*stage)
    timer.print(time.perf_counter() - started)
    write_json(
        out / DEMO_FILE,
        {
            "config": config,
            "status": "complete",
            "compute": {"dtype": dtype, "threads": threads},
            "stages": [{"stage": n, "seconds": s, "result": r} for n, s, r in timer.rows],
            "total_seconds": time.perf_counter() - started,
        },
    )
    reports = "   ".join(f"{f / 'report.md'}" for f in (out / "eval", out / "eval-dpo") if (f / "report.md").exists())
    console.print(f"[bold]Report:[/bold] {reports}   [bold]Browser:[/bold] {out / 'eval' / 'browser.html'}")
    return out


if __name__ == "__main__":  # one stage in its own process (a lane, module doc): python -m ... OUT STAGE
    folder, stage = sys.argv[1], sys.argv[2]
    run_demo(DemoConfig(out=folder, **read_json(Path(folder) / DEMO_FILE)["config"]), only=stage)
