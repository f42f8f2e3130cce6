"""Scored exemplars per second: the fine-tuned simulator vs the prompted all-at-once one.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/simulator_finetuned.py [--dtype bf16] [--run RUN_DIR]

Same model, same dtype, same batch size, both on their prefix-shared batched path. Workload: one
planted feature (digits) with N held-out windows of T tokens (top and random, split `score`),
scored by `simulate_and_score` for a few explanations. Without --run the fine-tuned simulator is
the base model read through the fine-tuned format (untrained: speed does not depend on the weights,
a merged LoRA has the base model's shape). Interleaved repeats, best of each.
"""

from __future__ import annotations

import argparse
import time

import torch

from neuroscribe.distill.planted.features import RULES, planted_features
from neuroscribe.models import DEFAULT_MODEL, load_model, warn_unless_one_thread
from neuroscribe.records import Explanation
from neuroscribe.scorers import simulate_and_score
from neuroscribe.simulators import load_simulator
from neuroscribe.simulators.allatonce import LocalSimulator
from neuroscribe.simulators.finetuned import FinetunedSimulator, SimulatorFormat

EXPLANATIONS = ("digits and numbers", "years in dates", "the word 'object'", "closing brackets of function calls")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--run", default=None, help="a trained simulator folder (its base must be --model)")
    ap.add_argument("--dtype", default="bfloat16", help="one dtype for both simulators")
    ap.add_argument("--exemplars", type=int, default=20, help="held-out windows per feature (top + random)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per window")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    warn_unless_one_thread()
    torch.manual_seed(0)
    model, tok = load_model(args.model, dtype=args.dtype)
    per_side = 3 * (args.exemplars // 2)  # the score split gets a third of each source
    record = planted_features(tok, [RULES["digits"]], window=args.tokens, n_top=per_side, n_random=per_side)[0]
    n = len(record.select(split="score"))
    prompted = LocalSimulator(model, tok, batch_size=args.batch_size)
    if args.run:
        finetuned = load_simulator(f"finetuned:{args.run}", dtype=args.dtype, batch_size=args.batch_size)
    else:
        finetuned = FinetunedSimulator(model, tok, SimulatorFormat.for_tokenizer(tok), batch_size=args.batch_size)
    explanations = [Explanation(record.feature.key, text, "bench") for text in EXPLANATIONS]

    def score_all(sim) -> float:
        start = time.perf_counter()
        for e in explanations:
            simulate_and_score(sim, e, record, "score")
        return time.perf_counter() - start

    simulate_and_score(prompted, explanations[0], record, "score")  # warm-up
    simulate_and_score(finetuned, explanations[0], record, "score")
    t_prompted, t_finetuned = (
        min(ts) for ts in zip(*((score_all(prompted), score_all(finetuned)) for _ in range(args.repeats)))
    )
    scored = n * len(explanations)
    print(
        f"model {args.model}  dtype {args.dtype}  threads {torch.get_num_threads()}  batch {args.batch_size}"
        + (f"  fine-tuned run {args.run}" if args.run else "  (fine-tuned format on the base weights)")
    )
    print(f"workload: {len(explanations)} explanations x {n} held-out windows of {args.tokens} tokens")
    print(f"prompted all-at-once: {t_prompted:.2f} s = {scored / t_prompted:.1f} scored exemplars/s")
    print(f"fine-tuned:           {t_finetuned:.2f} s = {scored / t_finetuned:.1f} scored exemplars/s")
    print(f"ratio fine-tuned / prompted: {t_prompted / t_finetuned:.2f}x")


if __name__ == "__main__":
    main()
