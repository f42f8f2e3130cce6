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

The demo is a plan (`DemoRun.plan`): a list of `Stage`s (name, done-when, run, what its output
holds) and `Lanes` of stages that run at once. Every stage writes under the run folder and is skipped
when its output is there, and every LLM call and simulation goes through one sqlite cache: a rerun
reuses everything. Stage times are printed and kept in `demo.json` (`runs.demo`). Training settings
come from the demo's recipes (`recipes/tiny/demo/*.yaml`); a stage passes only its paths, the seed and
the DemoConfig knobs (`sft_knobs`, `dpo_knobs`, `simulator_knobs`).

Two lanes where it pays. Calibrate runs in its own process beside explain + score (one torch thread
each; two threads of one process mostly wait on each other), which on the 2-core machine the README
measured saves about a minute. Other overlaps did not pay there: training beside an eval slowed both
about 1.5x, so the rest runs in order. Each stage's own time is kept; the total is wall-clock.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from neuroscribe.cache import Cache
from neuroscribe.configs import CollectConfig, DemoConfig, DistillConfig, ExplainConfig, MiningConfig
from neuroscribe.distill.collect import collect
from neuroscribe.distill.datasets import build_datasets
from neuroscribe.distill.explain import explain
from neuroscribe.distill.planted.paraphrases import paraphrases
from neuroscribe.models import cache_dir, fastest_cpu_setup, load_tokenizer
from neuroscribe.options import to_dict
from neuroscribe.runs import demo as demo_files
from neuroscribe.runs import eval as eval_files
from neuroscribe.runs.datasets import heldout_file, is_built, read_build, read_heldout
from neuroscribe.runs.explain import is_complete, read_meta
from neuroscribe.runs.simulator import is_simulator
from neuroscribe.runs.store import ExemplarStore, is_store
from neuroscribe.runs.train import has_adapter, has_model
from neuroscribe.simulators import load_simulator

from . import demo_data
from .benchmark import EvalConfig, evaluate
from .calibration import calibrate, headline
from .report import answer
from .results import BASE_BEST_OF_1, REFERENCE_ROW, STUDENT_BEST_OF_1, TEACHER

console = Console()
JUDGED_ROWS = (TEACHER, STUDENT_BEST_OF_1, BASE_BEST_OF_1, REFERENCE_ROW)  # the prompted judge's rows
# The real store: 12 top and 12 random windows per neuron, one per quantile bin.
REAL_MINING = MiningConfig(top_k=12, per_quantile=1, random_k=12)
# distill: a preference pair needs candidates 0.1 apart; 10% of training features steer validation.
PAIR_MARGIN, VALIDATION_FRACTION = 0.1, 0.1


def recipes_dir() -> Path:
    """The shipped recipes: `recipes/` of a checkout, or the copy inside an installed wheel."""
    import neuroscribe.recipes as recipes  # a data-only package (pyproject maps it to recipes/)

    return Path(list(recipes.__path__)[0])


# ------------------------------------------------------------------------------ recipe knobs


def sft_knobs(cfg: DemoConfig) -> dict[str, object]:
    """The DemoConfig fields that set recipes/tiny/demo/sft.yaml's values (one checkpoint, at the end)."""
    return {
        "max_steps": cfg.sft_steps,
        "save_steps": cfg.sft_steps,
        "per_device_train_batch_size": cfg.sft_batch,
        "learning_rate": cfg.sft_lr,
        "lora_layers": cfg.sft_lora_layers,
    }


def dpo_knobs(cfg: DemoConfig) -> dict[str, object]:
    """recipes/tiny/demo/dpo.yaml's values from DemoConfig: DPO at a fifth of the SFT learning rate."""
    return {
        "max_steps": cfg.dpo_steps,
        "save_steps": cfg.dpo_steps,
        "per_device_train_batch_size": cfg.sft_batch,
        "learning_rate": cfg.sft_lr / 5,
    }


def simulator_knobs(cfg: DemoConfig, steps: int) -> dict[str, object]:
    """recipes/tiny/demo/simulator.yaml's values from DemoConfig (`steps` from its epochs or steps)."""
    return {
        "max_steps": steps,
        "learning_rate": cfg.simulator_lr,
        "per_device_train_batch_size": cfg.simulator_batch,
        "lora_layers": cfg.simulator_lora_layers,
    }


def _run(cmd: list[str], log: Path, threads: int) -> None:
    """A step as users run it, in its own process; its output goes to a log file."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    with open(log, "w") as sink:
        res = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {res.returncode}); log {log}:\n{demo_files.log_tail(log)}")


def train(entry: str, recipe: str, paths: dict[str, object], knobs: dict[str, object], log: Path, threads: int):
    """`python -m neuroscribe.train.<entry> --config recipes/tiny/demo/<recipe> --key value ...`: the
    recipe holds every training setting; `paths` and `knobs` are all the demo adds (None: left out)."""
    cmd = [sys.executable, "-m", f"neuroscribe.train.{entry}", "--config", str(recipes_dir() / "tiny/demo" / recipe)]
    for name, value in {**paths, **knobs}.items():
        if value is not None:
            cmd += [f"--{name}", str(value)]
    _run(cmd, log, threads)


def train_simulator(cfg: DemoConfig, tok, rules: list, heldout: list[str], out: Path, threads: int) -> int:
    """Train the demo's fine-tuned simulator on `rules` (its data under `out`/simulator-data, its log in
    `out`/logs) into the user cache (`demo_data.simulator_cache`); `heldout` keys are refused as training
    rows. Returns the optimizer steps it took."""
    done, training = demo_data.simulator_cache(cache_dir(), cfg, rules)
    data, n_rows = demo_data.simulator_data(tok, rules, heldout, cfg, out / "simulator-data")
    steps = (
        math.ceil(cfg.simulator_epochs * n_rows / cfg.simulator_batch) if cfg.simulator_epochs else cfg.simulator_steps
    )
    paths = {"model_name_or_path": cfg.model, "dataset_name": data, "output_dir": training, "seed": cfg.seed}
    train(
        "simulator",
        "simulator.yaml",
        paths,
        simulator_knobs(cfg, steps),
        demo_files.log_file(out, "simulator"),
        threads,
    )
    demo_data.finish_simulator(training, done, demo_data.simulator_settings(cfg, rules))
    return steps


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Stage:
    """One step of the plan: `run` is skipped when `done()`; `result()` says what its output holds."""

    name: str
    done: Callable[[], bool]
    run: Callable[[], None]
    result: Callable[[], str]
    skip: Callable[[], str | None] = lambda: None  # a reason not to run the stage at all
    apart: bool = False  # run in its own process (`python -m neuroscribe.eval.demo OUT NAME`)


@dataclass(frozen=True)
class Lanes:
    """Stages that run at once, one torch thread each (module doc)."""

    stages: tuple[Stage, ...]


Step = Stage | Lanes


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
    default = DemoConfig()
    return dataclasses.replace(
        cfg, **{k: v for k, v in PROOF.items() if getattr(cfg, k) == getattr(default, k)}, proof=True
    )


class DemoRun:
    """One demo folder: its configuration, compute, paths, and the plan of stages over them."""

    def __init__(self, cfg: DemoConfig, lane: bool = False):
        self.cfg = proof_config(cfg) if cfg.proof else cfg
        self.out = Path(self.cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.config = check_config(self.out, self.cfg)
        self.dtype, self.threads = compute(self.cfg, lane)
        out = self.out
        self.real, self.store, self.scored, self.distill = out / "real", out / "store", out / "scored", out / "distill"
        self.cache_path, self.heldout_list = out / "cache.sqlite", demo_files.heldout_list(out)
        self.students = [out / "sft", *(out / f"sft-s{i}" for i in range(1, self.cfg.student_seeds))]  # seed, +1, ..
        self.control, self.merged, self.dpo = out / "sft-control", out / "sft-merged", out / "dpo"
        self.tok = load_tokenizer(self.cfg.model)
        self.parts = demo_data.planted_parts(self.cfg)
        self.sim_done, _ = demo_data.simulator_cache(cache_dir(), self.cfg, self.parts["simulator"])
        self.finetuned, self.prompted = f"finetuned:{self.sim_done}", f"hf:{self.cfg.model}"
        self.simulator_steps: int | None = None  # set when this run trains the simulator (not reused)

    # ---------------------------------------------------------------------------- stages

    def plan(self) -> list[Step]:
        cfg, out = self.cfg, self.out
        steps: list[Step] = [
            Stage("collect", lambda: is_store(self.real), self.collect, self.collect_result),
            Stage("plant", self.heldout_list.exists, self.plant, self.plant_result),
            Stage("train simulator", lambda: is_simulator(self.sim_done), self.train_simulator, self.simulator_result),
            Lanes(
                (
                    Stage("calibrate", self.calibrated, self.calibrate, self.calibration_result, apart=True),
                    Stage("explain + score", lambda: is_complete(self.scored), self.explain, self.explain_result),
                )
            ),
            Stage("distill", lambda: is_built(self.distill), self.build, self.distill_result),
            self.sft_stage("train student (SFT)", self.students[0], cfg.seed),
            *(
                self.sft_stage(f"train student (SFT, seed {cfg.seed + i})", folder, cfg.seed + i)
                for i, folder in enumerate(self.students[1:], 1)
            ),
        ]
        if cfg.format_control:
            steps.append(
                self.sft_stage("train format control (SFT on shuffled winners)", self.control, cfg.seed, "sft_control")
            )
        steps.append(self.eval_stage("eval + report (SFT student)", self.students[0], out / "eval", self.students))
        if cfg.dpo_steps:
            steps += [
                Stage(
                    "train student (DPO)",
                    lambda: has_adapter(self.dpo),
                    self.train_dpo,
                    lambda: f"LoRA DPO, {cfg.dpo_steps} steps on the merged SFT student -> {self.dpo}",
                    skip=self.no_pairs,
                ),
                self.eval_stage(
                    "eval + report (DPO student)", self.dpo, out / "eval-dpo", [self.students[0], self.dpo]
                ),
            ]
        return steps

    def collect(self) -> None:
        cfg = self.cfg
        collect(
            CollectConfig(
                out=str(self.real),
                model=cfg.model,
                features=(cfg.features,),
                window=cfg.window,
                max_windows=cfg.windows,
                dtype=self.dtype,
                mining=REAL_MINING,
            )
        )

    def collect_result(self) -> str:
        s = ExemplarStore(self.real).summary()
        return f"{s['features']} real features ({s['dead']} dead), {s['exemplars']} exemplars"

    def plant(self) -> None:
        demo_files.write_plant(self.out, demo_data.build_store(self.real, self.out, self.tok, self.parts, self.cfg))

    def plant_result(self) -> str:
        c = demo_files.read_plant(self.out)
        return (
            f"{c['planted_explainer']} planted training + {c['planted_heldout']} held-out planted features; "
            f"{c['heldout_real']} real features held out"
        )

    def train_simulator(self) -> None:
        rules = self.parts["simulator"]
        self.simulator_steps = train_simulator(
            self.cfg, self.tok, rules, read_heldout(self.heldout_list), self.out, self.threads
        )

    def simulator_result(self) -> str:
        if self.simulator_steps is None:
            return f"reused {self.sim_done}"
        return f"{len(self.parts['simulator'])} planted rules, {self.simulator_steps} steps -> {self.sim_done}"

    def calibrated(self) -> bool:
        return (self.out / demo_files.CALIBRATION).is_file()

    def calibrate(self) -> None:
        cfg = self.cfg
        s, truth = ExemplarStore(self.store), demo_files.read_truth(self.out)
        by_name = {r.name: r for part in self.parts.values() for r in part}
        held = [k for k in read_heldout(self.heldout_list) if k in truth]
        cache = Cache(self.cache_path)
        try:
            sims = [load_simulator(spec, cache, dtype=self.dtype) for spec in (self.finetuned, self.prompted)]
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
                trained_families=sorted({r.family for r in self.parts["simulator"]}),
            )
        finally:
            cache.close()
        demo_files.write_calibration(self.out, result)

    def calibration_result(self) -> str:
        return headline(demo_files.read_calibration(self.out))

    def explain(self) -> None:
        cfg = self.cfg
        explain(
            ExplainConfig(
                store=str(self.store),
                out=str(self.scored),
                teacher=cfg.teacher,
                simulator=self.finetuned,
                k=cfg.k,
                prompt_style=cfg.prompt_style,
                max_exemplars=cfg.max_exemplars,
                max_tokens=cfg.max_tokens,
                dtype=self.dtype,
                cache=str(self.cache_path),
                seed=cfg.seed,
            )
        )

    def explain_result(self) -> str:
        meta = read_meta(self.scored)
        return (
            f"{meta.n_candidates} candidates for {meta.n_features} features, mean best score "
            f"{meta.mean_best_score_in_sample:.3f} (in-sample: the split that selected them)"
        )

    def build(self) -> None:
        cfg = self.cfg
        build_datasets(
            DistillConfig(
                str(self.scored),
                str(self.distill),
                threshold=cfg.threshold,
                min_margin=PAIR_MARGIN,
                heldout_file=str(self.heldout_list),
                validation_fraction=VALIDATION_FRACTION,
                max_exemplars=cfg.max_exemplars,
                seed=cfg.seed,
            )
        )

    def distill_result(self) -> str:
        build = read_build(self.distill)
        rows, splits = build.rows, build.splits
        return (
            f"{rows['sft']['train']} SFT / {rows['preference']['train']} preference training rows from "
            f"{len(splits['train'])} features; {len(splits['heldout'])} held out"
        )

    def sft_stage(self, name: str, folder: Path, seed: int, config: str = "sft") -> Stage:
        cfg = self.cfg

        def run() -> None:
            paths = {
                "model_name_or_path": cfg.model,
                "dataset_name": self.distill,
                "dataset_config": config,
                "output_dir": folder,
                "seed": seed,
            }
            train("sft", "sft.yaml", paths, sft_knobs(cfg), demo_files.log_file(self.out, folder.name), self.threads)

        return Stage(
            name,
            lambda: has_adapter(folder),
            run,
            lambda: f"LoRA SFT on {config}, {cfg.sft_steps} steps at lr {cfg.sft_lr}, seed {seed} -> {folder}",
        )

    def no_pairs(self) -> str | None:
        if not read_build(self.distill).rows["preference"]["train"]:
            return "the explain run gave no preference pair (no candidates differing by >= 0.1)"
        return None

    def train_dpo(self) -> None:
        """DPO on the merged SFT student (the preference pairs of the same explain run)."""
        sft = self.students[0]
        if not has_model(self.merged):
            cmd = [
                sys.executable,
                "-m",
                "neuroscribe.cli",
                "publish",
                str(sft),
                "--merge",
                "--dry-run",
                str(self.merged),
            ]
            _run(cmd, demo_files.log_file(self.out, "merge"), self.threads)
        paths = {
            "model_name_or_path": self.merged,
            "dataset_name": self.distill,
            "output_dir": self.dpo,
            "seed": self.cfg.seed,
        }
        train("dpo", "dpo.yaml", paths, dpo_knobs(self.cfg), demo_files.log_file(self.out, "dpo"), self.threads)

    def eval_config(self, student: Path, folder: Path, runs: list[Path]) -> EvalConfig:
        cfg = self.cfg
        return EvalConfig(
            store=str(self.store),
            features=str(heldout_file(self.distill)),
            student=str(student),
            out=str(folder),
            teacher_results=str(self.scored),
            simulators=(self.finetuned, self.prompted),
            judged_rows=JUDGED_ROWS,
            judged_features=cfg.judge_features,
            reliability_features=cfg.reliability_features,
            base=cfg.model,
            reference=str(self.out / demo_files.TRUTH),
            reference_label="the planted rule",
            training_runs=tuple(map(str, runs)),
            calibration=str(self.out / demo_files.CALIBRATION),
            control=str(self.control) if cfg.format_control else None,
            student_seeds=tuple(str(f) for f in self.students[1:]),
            primary=cfg.primary,
            k=1,
            dtype=self.dtype,
            max_tokens=cfg.max_tokens,
            cache=str(self.cache_path),
            seed=cfg.seed,
        )

    def eval_stage(self, name: str, student: Path, folder: Path, runs: list[Path]) -> Stage:
        return Stage(
            name,
            lambda: (folder / eval_files.RESULTS).is_file(),
            lambda: evaluate(self.eval_config(student, folder, runs)),
            lambda: answer(eval_files.read_results(folder)),
            skip=lambda: None if has_adapter(student) else f"no student at {student}",
        )


# ------------------------------------------------------------------------------ running the plan


def perform(stage: Stage, out: Path) -> str:
    """Run `stage` unless skipped or done (in its own process when `apart`); what its output holds."""
    reason = stage.skip()
    if reason:
        return f"skipped: {reason}"
    if not stage.done():
        if stage.apart:
            cmd = [sys.executable, "-m", "neuroscribe.eval.demo", str(out), stage.name]
            _run(cmd, demo_files.log_file(out, stage.name.replace(" ", "-")), 1)
        else:
            stage.run()
    return stage.result()


@dataclass
class StageTimer:
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def one(self, stage: Stage, out: Path) -> None:
        console.rule(f"[bold]{stage.name}")
        start = time.perf_counter()
        note = perform(stage, out)
        self.rows.append((stage.name, time.perf_counter() - start, note))
        console.print(f"[green]{stage.name}[/green] done in {self.rows[-1][1]:.1f}s: {note}")

    def lanes(self, lanes: Lanes, out: Path) -> None:
        """Run the lanes' stages at once, one torch thread each (module doc); rows in the plan's order."""
        console.rule(f"[bold]{' | '.join(s.name for s in lanes.stages)}  (at once)")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)

        def timed(stage: Stage) -> tuple[float, str]:
            start = time.perf_counter()
            note = perform(stage, out)
            return time.perf_counter() - start, note

        try:
            with ThreadPoolExecutor(len(lanes.stages)) as pool:
                futures = [pool.submit(timed, s) for s in lanes.stages]
                next(as_completed(futures))
                torch.set_num_threads(threads)  # one lane left: it may have the threads back
                results = [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)
        for stage, (secs, note) in zip(lanes.stages, results):
            self.rows.append((stage.name, secs, note))
            console.print(f"[green]{stage.name}[/green] done in {secs:.1f}s: {note}")

    def print(self, wall: float) -> None:
        table = Table(title="neuroscribe demo")
        for col in ("stage", "seconds", "result"):
            table.add_column(col)
        for name, secs, note in self.rows:
            table.add_row(name, f"{secs:.1f}", note)
        table.add_row("total (wall-clock; lanes overlap)", f"{wall:.1f}", "")
        console.print(table)


def check_config(out: Path, cfg: DemoConfig) -> dict:
    """A run folder holds one configuration: the first run records it in demo.json before any stage, and
    a rerun with other settings is refused, never mixed in."""
    want = {k: v for k, v in to_dict(cfg).items() if k != "out"}
    had = demo_files.read_demo(out)
    if had is None:
        demo_files.write_demo(out, {"config": want, "status": "running"})
        return want
    diff = sorted(k for k in want if k in had.get("config", {}) and had["config"][k] != want[k])
    if diff:
        raise ValueError(
            f"{out / demo_files.DEMO}: field config differs from this run's ({', '.join(diff)}); "
            f"use another --out or remove {out}"
        )
    return want


def compute(cfg: DemoConfig, lane: bool = False) -> tuple[str, int]:
    """(dtype, torch threads): measured on this CPU for `--dtype auto`; a lane's process uses one thread."""
    dtype, threads = fastest_cpu_setup() if cfg.dtype == "auto" else (cfg.dtype, cfg.threads or 1)
    threads = 1 if lane else cfg.threads or threads
    torch.set_num_threads(threads)
    return dtype, threads


def run_demo(cfg: DemoConfig = DemoConfig(), only: str | None = None) -> Path:
    """Run every stage of the plan not done yet (module doc); `only` runs that one stage alone, at one
    thread (how a lane runs in its own process: `python -m neuroscribe.eval.demo OUT STAGE`)."""
    run = DemoRun(cfg, lane=only is not None)
    measured = " (measured on this CPU)" if run.cfg.dtype == "auto" else ""
    console.print(f"compute: {run.dtype}, {run.threads} torch thread(s){measured}")
    plan = run.plan()
    if only:
        stages = {s.name: s for step in plan for s in (step.stages if isinstance(step, Lanes) else (step,))}
        stage = stages[only]
        if not stage.skip() and not stage.done():
            stage.run()
        return run.out
    timer = StageTimer()
    started = time.perf_counter()
    for step in plan:
        if isinstance(step, Lanes):
            timer.lanes(step, run.out)
        else:
            timer.one(step, run.out)
    timer.print(time.perf_counter() - started)
    demo_files.write_demo(
        run.out,
        {
            "config": run.config,
            "status": "complete",
            "compute": {"dtype": run.dtype, "threads": run.threads},
            "stages": [{"stage": n, "seconds": s, "result": r} for n, s, r in timer.rows],
            "total_seconds": time.perf_counter() - started,
        },
    )
    reports = [
        f / eval_files.REPORT for f in (run.out / "eval", run.out / "eval-dpo") if (f / eval_files.REPORT).exists()
    ]
    browser = run.out / "eval" / eval_files.BROWSER
    console.print(f"[bold]Report:[/bold] {'   '.join(map(str, reports))}   [bold]Browser:[/bold] {browser}")
    return run.out


if __name__ == "__main__":  # one stage in its own process (a lane, module doc): python -m ... OUT STAGE
    folder, stage = sys.argv[1], sys.argv[2]
    record = demo_files.read_demo(folder)
    if record is None:
        raise SystemExit(f"{Path(folder) / demo_files.DEMO}: missing; run `neuroscribe demo --out {folder}` first")
    run_demo(DemoConfig(out=folder, **record["config"]), only=stage)
