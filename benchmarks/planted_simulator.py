"""Does the demo's fine-tuned simulator tell a planted rule's true explanation from wrong ones, on rules
it never saw, including rules of kinds its training suite does not contain?

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/planted_simulator.py [--simulator finetuned:PATH]
     [--prompted-rules 4]

The simulator is the one `neuroscribe demo` trains on the `simulator` part of the planted-rule suite
(`distill.planted.suite`), reused from the user cache (run the demo first, or pass `--simulator`).
Two held-out groups, each scored with `eval.calibration.calibrate` (every rule's test exemplars under
its true explanation and under `--wrong` other rules' of the group, drawn with a seed; win rate = share of (rule, wrong)
pairs the true one wins, rank 1 = rules where it beats every wrong one):
- suite held-out: the suite's `heldout` part (same families as training, other rules);
- novel kinds: NOVEL below, rules of kinds no suite family has (letters inside words, number
  formats, lengths, look-ahead positions), written here and nowhere in the package.
The prompted all-at-once simulator (the bundled model) is scored on the first `--prompted-rules` of
each group (it is ~5x slower).
"""

from __future__ import annotations

import argparse
import time

from neuroscribe.configs import DemoConfig
from neuroscribe.distill.planted.features import PlantedRule
from neuroscribe.eval.calibration import calibrate
from neuroscribe.eval.demo_data import live_planted, planted_parts, simulator_cache
from neuroscribe.models import DEFAULT_MODEL, cache_dir, load_tokenizer, warn_unless_one_thread
from neuroscribe.runs.simulator import is_simulator
from neuroscribe.simulators import load_simulator

NOVEL = (
    PlantedRule("bench_decimal", "decimal numbers such as 3.14", r"\b\d+\.\d+\b", family="novel"),
    PlantedRule("bench_letter_z", "words containing the letter z", r"\b\w*[zZ]\w*\b", family="novel"),
    PlantedRule(
        "bench_double_letter", "words with a doubled letter, such as 'ee' or 'll'", r"\b\w*(\w)\1\w*\b", family="novel"
    ),
    PlantedRule("bench_three_letter", "words of exactly three letters", r"\b[A-Za-z]{3}\b", family="novel"),
    PlantedRule(
        "bench_before_stop", "the last word of a sentence, right before the full stop", r"\b\w+(?=\.\s)", family="novel"
    ),
    PlantedRule("bench_big_numbers", "numbers of three or more digits", r"\b\d{3,}\b", family="novel"),
    PlantedRule("bench_vowel_end", "words ending in a vowel", r"\b[A-Za-z]*[aeiou]\b", family="novel"),
    PlantedRule("bench_x", "words containing the letter x", r"\b\w*[xX]\w*\b", family="novel"),
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--simulator", default=None, help="default: the demo's cached fine-tuned simulator")
    ap.add_argument("--prompted-rules", type=int, default=4)
    ap.add_argument("--wrong", type=int, default=4, help="wrong explanations per rule (the demo's count)")
    args = ap.parse_args(argv)
    warn_unless_one_thread()
    cfg = DemoConfig()
    parts = planted_parts(cfg)
    done, _ = simulator_cache(cache_dir(), cfg, parts["simulator"])
    spec = args.simulator or f"finetuned:{done}"
    if args.simulator is None and not is_simulator(done):
        raise SystemExit(f"no trained demo simulator at {done}: run `neuroscribe demo` first, or pass --simulator")
    tok = load_tokenizer(cfg.model)
    sims = [load_simulator(spec), load_simulator(f"hf:{DEFAULT_MODEL}")]
    print(f"fine-tuned simulator {spec} (trained on {len(parts['simulator'])} suite rules)")
    for name, rules in (("suite held-out", parts["heldout"]), ("novel kinds", list(NOVEL))):
        live = live_planted(tok, rules, cfg)
        start = time.perf_counter()
        cal = calibrate(
            sims,
            [f for _, f in live],
            [r.explanation for r, _ in live],
            [r.name for r, _ in live],
            n_wrong=args.wrong,
            limit={sims[1].spec: args.prompted_rules},
        )
        print(f"\n{name}: {len(live)} rules firing on the corpus ({time.perf_counter() - start:.0f} s)")
        for sim_spec, c in cal["simulators"].items():
            label = "fine-tuned" if sim_spec == sims[0].spec else "prompted  "
            print(
                f"  {label} win rate {c['win_rate']:.2f}  rank 1 for {c['rank1']}/{c['n_rules']}  "
                f"mean true {c['mean_true']:.3f}  mean wrong {c['mean_wrong']:.3f}"
            )
        if name == "novel kinds":
            for row in cal["simulators"][sims[0].spec]["rules"]:
                best_wrong = max(row["wrong_scores"])
                print(f"    {row['rule']:22} true {row['true_score']:.3f}  best wrong {best_wrong:.3f}")


if __name__ == "__main__":
    main()
