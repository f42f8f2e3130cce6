"""Planted features: does a simulator tell the true explanation from a wrong one, on rules it never saw?

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/planted_simulator.py [--max-steps 150] [--dtype bf16]

1. Planted features (`neuroscribe.distill.planted`) on the builtin corpus, SmolLM2's tokenizer: structural
   rules (digits, parentheses, ...) and "the word X" rules. Rules are split: TRAIN rules give the
   training rows (every exemplar of the feature with its true explanation); HELD-OUT rules (other
   structural rules, other words) are only ever evaluated.
2. A LoRA on SmolLM2-135M-Instruct is trained on the train rows with `neuroscribe.train.simulator`
   and the tiny recipe (a few minutes on a CPU), then loaded as `finetuned:RUN`.
3. For every held-out rule, every held-out rule's explanation is scored on the feature's test split
   (pooled Pearson, top and random 1:1, `simulate_and_score`) by: the prompted all-at-once simulator
   (`LocalSimulator`, same model and dtype), the fine-tuned one, and the fine-tuned format on the
   untrained model (a control: what the header + class read-out give without training).
Printed per simulator and rule group: win rate = share of (rule, wrong explanation) pairs where the
true explanation scores higher (a NaN true score loses), mean true score, mean wrong score.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from neuroscribe.distill.planted import RULES, planted_features, word_rule

from neuroscribe.models import DEFAULT_MODEL, load_model
from neuroscribe.records import Explanation
from neuroscribe.scorers import simulate_and_score
from neuroscribe.simulators import load_simulator
from neuroscribe.simulators.allatonce import LocalSimulator
from neuroscribe.simulators.finetuned import FinetunedSimulator, SimulatorFormat

ROOT = Path(__file__).resolve().parents[1]
TRAIN_STRUCTURAL = (
    "digits",
    "parentheses",
    "capitalised",
    "comma",
    "ing_words",
    "colon",
    "long_words",
    "after_the",
    "asterisks",
)
HELDOUT_STRUCTURAL = ("double_quotes", "sentence_end", "snake_case", "acronyms", "after_a")
TRAIN_WORDS = (
    "is",
    "of",
    "in",
    "to",
    "and",
    "for",
    "if",
    "be",
    "are",
    "that",
    "or",
    "class",
    "as",
    "it",
    "with",
    "not",
    "by",
    "this",
    "value",
    "function",
    "method",
    "can",
    "exception",
    "when",
    "name",
    "type",
    "list",
    "statement",
    "return",
    "module",
    "string",
    "from",
)
HELDOUT_WORDS = ("object", "instance", "expression", "attribute", "sequence", "code", "argument", "dictionary")


def rule_sets():
    train = [RULES[n] for n in TRAIN_STRUCTURAL] + [word_rule(w) for w in TRAIN_WORDS]
    held = [RULES[n] for n in HELDOUT_STRUCTURAL] + [word_rule(w) for w in HELDOUT_WORDS]
    return train, held


def train_simulator(tok, train_rules, args, work: Path) -> Path:
    from neuroscribe.distill.simulator_data import feature_rows, write_simulator_dataset
    from neuroscribe.train import simulator
    from neuroscribe.train.args import parse_args

    feats = planted_features(tok, train_rules, window=args.window, max_windows=args.max_windows)
    rows = [r for rule, f in zip(train_rules, feats) for r in feature_rows(f, rule.explanation, "stage1")]
    data = write_simulator_dataset(
        work / "data",
        {"stage1": {"train": rows, "validation": []}},
        [],
        {"scored_dir": "planted rules"},
        overwrite=True,
    )
    run = work / "run"
    argv = [
        "--config",
        str(ROOT / "recipes/tiny/simulator.yaml"),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(run),
        "--max_steps",
        str(args.max_steps),
        "--dtype",
        args.dtype,
        "--learning_rate",
        str(args.lr),
        "--lr_scheduler_type",
        "cosine",
        "--warmup_steps",
        "0.05",
        "--save_strategy",
        "no",
        "--logging_steps",
        "10",
        "--disable_tqdm",
        "true",
    ]
    start = time.perf_counter()
    simulator.main(*parse_args("simulator", argv))
    print(
        f"trained {args.max_steps} steps on {len(rows)} rows ({len(train_rules)} rules) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return run


def score_matrix(sim, feats, held) -> list[list[float]]:
    """scores[i][j]: explanation of rule j scored on feature i (test split)."""
    return [
        [simulate_and_score(sim, Explanation(f.feature.key, r.explanation, "planted"), f, "test").score for r in held]
        for f in feats
    ]


def summarise(scores, idx) -> tuple[float, float, float]:
    wins, pairs, true, wrong = 0, 0, [], []
    for i in idx:
        t = scores[i][i]
        true.append(t)
        for j in range(len(scores)):
            if j != i:
                pairs += 1
                wins += bool(math.isfinite(t) and (not math.isfinite(scores[i][j]) or t > scores[i][j]))
                wrong.append(scores[i][j])

    def mean(xs):
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.fmean(xs) if xs else math.nan

    return wins / pairs, mean(true), mean(wrong)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="bfloat16", help="one dtype for training and every simulator")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--window", type=int, default=24)
    ap.add_argument("--max-windows", type=int, default=4000)
    ap.add_argument("--work", default=None, help="folder for the dataset and run (default: a temp folder)")
    args = ap.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("warning: set OMP_NUM_THREADS=1 (2 threads is up to 10x slower on this machine)")
    torch.manual_seed(0)
    start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="planted-"))
    model, tok = load_model(args.model, dtype=args.dtype)
    train_rules, held = rule_sets()
    run = train_simulator(tok, train_rules, args, work)
    feats = planted_features(tok, held, window=args.window, max_windows=args.max_windows)
    simulators = {
        "prompted (LocalSimulator)": LocalSimulator(model, tok, batch_size=8),
        "fine-tuned": load_simulator(f"finetuned:{run}", dtype=args.dtype),
        "fine-tuned format, untrained": FinetunedSimulator(model, tok, SimulatorFormat.for_tokenizer(tok)),
    }
    groups = {
        "held-out structural": range(len(HELDOUT_STRUCTURAL)),
        "held-out words": range(len(HELDOUT_STRUCTURAL), len(held)),
        "all held-out": range(len(held)),
    }
    print(
        f"\nmodel {args.model}, dtype {args.dtype}; {len(held)} held-out rules, each scored with all "
        f"{len(held)} held-out explanations on its test split ({len(feats[0].select(split='test'))} windows "
        f"of {args.window} tokens)"
    )
    print("| simulator | rules | n | win rate (true > wrong) | mean true score | mean wrong score | time |")
    print("|---|---|---|---|---|---|---|")
    for name, sim in simulators.items():
        t0 = time.perf_counter()
        scores = score_matrix(sim, feats, held)
        seconds = time.perf_counter() - t0
        for group, idx in groups.items():
            win, true, wrong = summarise(scores, idx)
            print(f"| {name} | {group} | {len(idx)} | {win:.2f} | {true:.3f} | {wrong:.3f} | {seconds:.0f} s |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; run folder {run}")


if __name__ == "__main__":
    main()
