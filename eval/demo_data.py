"""The demo's inputs: one store of real neurons and planted features, their held-out list and truths,
and the fine-tuned simulator (trained once per configuration, then reused from the user cache).

Planted rules come from `distill.planted.suite.split_suite`: the simulator trains on its `simulator`
part; `explainer` rules join the explain run and the student's data; `heldout` rules are never
trained on by anything: they calibrate the simulator and are the eval's known-answer features.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

from neuroscribe.configs import DemoConfig
from neuroscribe.distill.planted.features import PlantedRule, planted_features, simulator_rows
from neuroscribe.distill.planted.paraphrases import paraphrases
from neuroscribe.distill.planted.suite import split_suite, suite
from neuroscribe.distill.simulator_data import write_simulator_dataset
from neuroscribe.records import FeatureExemplars, FeatureId
from neuroscribe.runs import demo as demo_files
from neuroscribe.runs.datasets import DatasetBuild
from neuroscribe.runs.files import fingerprint
from neuroscribe.runs.store import ExemplarStore, write_store
from neuroscribe.simulators.finetuned_format import FORMAT_VERSION

PLANTED_TOP, PLANTED_RANDOM = 12, 9  # per planted feature: 4 top + 3 random exemplars per split


def planted_parts(cfg: DemoConfig) -> dict[str, list[PlantedRule]]:
    """The suite's three parts; the explainer and held-out parts capped as `cfg` says (first in order)."""
    rules = suite(larger=cfg.larger_suite)
    rules = [replace(r, graded=True) for r in rules] if cfg.planted_graded else rules
    parts = split_suite(rules, cfg.suite_fractions, unseen_families=cfg.unseen_families)
    return {
        "simulator": parts["simulator"],
        "explainer": parts["explainer"][: cfg.planted_explainer],
        "heldout": parts["heldout"][: cfg.planted_heldout],
    }


def live_planted(tokenizer, rules: list[PlantedRule], cfg: DemoConfig) -> list[tuple[PlantedRule, FeatureExemplars]]:
    """Planted features of `rules` on the corpus; rules that never fire are dropped."""
    feats = planted_features(
        tokenizer, rules, window=cfg.window, n_top=PLANTED_TOP, n_random=PLANTED_RANDOM, max_windows=cfg.planted_windows
    )
    return [(r, f) for r, f in zip(rules, feats) if not f.dead]


def heldout_real_units(store: ExemplarStore, n_units: int, seed: int) -> list[str]:
    """Both polarities of `n_units` live real units drawn with `seed` (a unit is held out whole)."""
    units = sorted({(f.kind, f.layer, f.index) for f in map(FeatureId.parse, store.keys())})
    picked = random.Random(seed).sample(units, min(n_units, len(units)))
    return [FeatureId(*u, p).key for u in sorted(picked) for p in (1, -1)]


def build_store(real: Path, out: Path, tokenizer, parts: dict[str, list[PlantedRule]], cfg: DemoConfig) -> dict:
    """Write `out`: the real store's features plus the planted ones of the explainer and held-out parts,
    `truth.jsonl` (every planted feature's true explanation) and `heldout.txt`. Returns a summary."""
    real_store = ExemplarStore(real)
    explainer = live_planted(tokenizer, parts["explainer"], cfg)
    heldout = live_planted(tokenizer, parts["heldout"], cfg)
    records = list(real_store.features(include_dead=True)) + [f for _, f in explainer + heldout]
    meta = {
        **real_store.meta,
        "planted": {
            "explainer": len(explainer),
            "heldout": len(heldout),
            "window": cfg.window,
            "windows": cfg.planted_windows,
        },
    }
    meta.pop("schema_version", None)
    meta.pop("fingerprint", None)
    held_real = heldout_real_units(real_store, cfg.heldout_real, cfg.seed)
    write_store(out / "store", records, meta, overwrite=True)
    demo_files.write_truth(
        out,
        (
            {"feature": f.feature.key, "explanation": r.explanation, "rule": r.name, "family": r.family}
            for r, f in explainer + heldout
        ),
    )
    live_real = set(real_store.keys())
    held = [f.feature.key for _, f in heldout] + [k for k in held_real if k in live_real]
    random.Random(cfg.seed).shuffle(held)
    demo_files.write_heldout(out, held)
    return {
        "real": len(real_store),
        "planted_explainer": len(explainer),
        "planted_heldout": len(heldout),
        "heldout_real": len(held_real),
    }


def simulator_settings(cfg: DemoConfig, rules: list[PlantedRule]) -> dict:
    """Everything that changes the trained simulator: the key of its cache folder."""

    return {
        "model": cfg.model,
        "format": FORMAT_VERSION,  # its label rule: a simulator of another format is never reused
        "rules": [(r.name, r.pattern, r.group, r.all_phrasings) for r in rules],
        "window": cfg.window,
        "windows": cfg.simulator_windows,
        "per_rule": cfg.simulator_per_rule,
        "n_random": cfg.simulator_random,
        "steps": cfg.simulator_steps,
        "lr": cfg.simulator_lr,
        "batch": cfg.simulator_batch,
        "lora_layers": cfg.simulator_lora_layers,
        "seed": cfg.seed,
        # added later: in the key only when set, so the default configuration keeps its cached simulator
        # mismatched rows on top windows only, half near misses (`planted.simulator_rows`, 2026-12-04)
        **({"others": cfg.simulator_others, "mismatched": "top-near-2"} if cfg.simulator_others else {}),
        **({"phrasings": cfg.simulator_phrasings} if cfg.simulator_phrasings != "suite" else {}),
        **({"graded": True} if cfg.planted_graded else {}),
        **({"epochs": cfg.simulator_epochs} if cfg.simulator_epochs else {}),
    }


def simulator_data(
    tokenizer, rules: list[PlantedRule], heldout: list[str], cfg: DemoConfig, out: Path
) -> tuple[Path, int]:
    """The planted-rule training rows as a `distill simulator-data` folder, and how many rows it holds;
    `heldout` keys are listed in its heldout.txt, so training refuses any row of theirs."""

    rows = simulator_rows(
        tokenizer,
        rules,
        window=cfg.window,
        max_windows=cfg.simulator_windows,
        per_rule=cfg.simulator_per_rule,
        n_random=cfg.simulator_random,
        others=cfg.simulator_others,
        seed=cfg.seed,
        phrasings=paraphrases if cfg.simulator_phrasings == "paraphrases" else None,
    )
    folder = write_simulator_dataset(
        out,
        {"stage1": {"train": rows, "validation": []}},
        heldout,
        DatasetBuild(
            scored_dir=f"planted rules ({len(rules)})",
            splits={"train": sorted({r["feature"] for r in rows}), "validation": [], "heldout": list(heldout)},
            rows={"stage1": {"train": len(rows), "validation": 0}},
        ),
        overwrite=True,
    )
    return folder, len(rows)


def simulator_cache(cache_root: Path, cfg: DemoConfig, rules: list[PlantedRule]) -> tuple[Path, Path]:
    """(the finished simulator's folder, the folder it trains in): a run is renamed into place only once
    complete, so a half-trained one is never reused; an interrupted one resumes from its checkpoint."""
    done = cache_root / "demo-simulators" / fingerprint(simulator_settings(cfg, rules))
    return done, done.with_name(done.name + ".training")


def finish_simulator(training: Path, done: Path, settings: dict) -> Path:
    demo_files.write_simulator_settings(training, settings)
    for ckpt in training.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    training.replace(done)
    return done
