"""Benchmark the vLLM simulator against our hf prefix-shared simulator, prefix caching on vs off.

Run (the vLLM venv; named vllm_simulate.py because a script called vllm.py would shadow the package):
  OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=nobind .venv-vllm/bin/python benchmarks/vllm_simulate.py

Workload: K explanations x N held-out exemplars of T tokens (real windows of the builtin corpus, as in
benchmarks/simulate.py), one dtype throughout. Every timed run uses new explanation texts, so vLLM's
prefix cache can only reuse what real runs share (instructions, few-shot examples, each explanation's
header across its exemplars), never a whole prompt seen before. Prints, per path, seconds and prompt
tokens/s (every prompt counted in full: the same work for all paths), the ratios, the largest expected
value difference from the hf path, and chat generation tokens/s of the vLLM and hf backends.

Features per hour, explain + score: one feature is the workload's K explanations generated (32 tokens
each, the generation rate measured here) and scored on its N exemplars (the simulator time measured
here), 3600 / (K x 32 / generation tok/s + simulator seconds); printed for the hf path, the vLLM path
and vLLM generation with the hf simulator (the pairing to use on this CPU).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # one torch thread (OMP_NUM_THREADS), no pinning

from simulate import corpus_exemplars  # noqa: E402  (benchmarks/ is the script's folder)

from neuroscribe.backends import ChatRequest, SamplingParams, load_backend  # noqa: E402
from neuroscribe.backends.vllm_backend import EngineOptions, VLLMBackend  # noqa: E402
from neuroscribe.models import DEFAULT_MODEL, load_model  # noqa: E402
from neuroscribe.prompts import simulator_prompt  # noqa: E402
from neuroscribe.simulators.allatonce import LocalSimulator  # noqa: E402
from neuroscribe.simulators.vllm_engine import DEFAULT_TOP_K, VLLMSimulator  # noqa: E402

EXPLANATIONS = ("closing brackets of function calls", "the word 'the' before nouns", "numbers in dates")


def explanations(run: int, k: int) -> list[str]:
    return [f"{EXPLANATIONS[i % len(EXPLANATIONS)]} (run {run}, variant {i})" for i in range(k)]


def timed_runs(simulate_many, exemplars, k: int, repeats: int) -> tuple[float, list]:
    """Best of `repeats` timed runs (this machine is shared: the minimum is the least disturbed)."""
    simulate_many(explanations(-1, 1), exemplars[:2])  # warm-up
    best, last = float("inf"), None
    for r in range(repeats):
        start = time.perf_counter()
        last = simulate_many(explanations(r, k), exemplars)
        best = min(best, time.perf_counter() - start)
    return best, last


def max_diff(a, b) -> float:
    return max(abs(x - y) for sa, sb in zip(a, b) for ea, eb in zip(sa, sb) for x, y in zip(ea.predicted, eb.predicted))


def generation(backend, n: int, tokens: int) -> float:
    reqs = [
        ChatRequest.user(f"Describe the number {i} in a sentence.", SamplingParams(1.0, tokens, seed=0))
        for i in range(n)
    ]
    backend.generate(reqs[:1])  # warm-up
    start = time.perf_counter()
    out = backend.generate(reqs)
    return sum(c.tokens_out for c in out) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--explanations", type=int, default=2)
    ap.add_argument("--exemplars", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32, help="tokens per exemplar")
    ap.add_argument("--batch-size", type=int, default=8, help="hf simulator batch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the engine (slower start, faster steps)")
    ap.add_argument("--generate", type=int, default=16, help="chat prompts for the generation rate (0: skip)")
    args = ap.parse_args(argv)

    model, tok = load_model(args.model, dtype=args.dtype)
    exemplars = corpus_exemplars(tok, args.exemplars, args.tokens)
    prompt_tokens = sum(
        len(tok(simulator_prompt(x, e.tokens).text)["input_ids"])
        for x in explanations(0, args.explanations)
        for e in exemplars
    )
    n_prompts = args.explanations * len(exemplars)
    print(f"model {args.model}  dtype {args.dtype}  OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS')}")
    print(f"workload: {args.explanations} explanations x {len(exemplars)} exemplars x {args.tokens} tokens")
    print(f"= {n_prompts} prompts, {prompt_tokens} prompt tokens in full")

    hf = LocalSimulator(model, tok, batch_size=args.batch_size)
    t_hf, ref = timed_runs(hf.simulate_many, exemplars, args.explanations, args.repeats)
    print(f"hf prefix-shared simulator (batch {args.batch_size}): {t_hf:.2f} s, {prompt_tokens / t_hf:.0f} tok/s")
    hf_gen = (
        generation(load_backend(f"hf:{args.model}", loaded=(model, tok)), args.generate, 32) if args.generate else 0
    )

    times, gen = {}, 0.0
    for caching in (True, False):
        start = time.perf_counter()
        options = EngineOptions(
            dtype=args.dtype,
            max_model_len=2048,
            kv_cache_gib=1.0,
            max_logprobs=DEFAULT_TOP_K,
            enable_prefix_caching=caching,
            enforce_eager=not args.compile,
        )
        backend = VLLMBackend(args.model, options=options)
        started = time.perf_counter() - start
        sim = VLLMSimulator(backend)
        times[caching], ours = timed_runs(sim.simulate_many, exemplars, args.explanations, args.repeats)
        label = "on " if caching else "off"
        print(
            f"vLLM simulator, prefix caching {label}: {times[caching]:.2f} s, "
            f"{prompt_tokens / times[caching]:.0f} tok/s "
            f"(engine start {started:.0f} s); max |vllm - hf| {max_diff(ours, ref):.2e}, "
            f"missing digits {sim.last_stats.n_missing_digits}"
        )
        if caching and args.generate:
            gen = generation(backend, args.generate, 32)
        backend.close()
        del backend, sim
        gc.collect()

    print(f"ratio vLLM (caching on) / hf simulator speed: {t_hf / times[True]:.2f}x")
    print(f"ratio vLLM caching on / off: {times[False] / times[True]:.2f}x")
    if args.generate:
        print(f"chat generation, {args.generate} prompts x 32 tokens: vLLM {gen:.0f} tok/s, hf {hf_gen:.0f} tok/s")
        per_hour = lambda gen_rate, sim_s: 3600 / (args.explanations * 32 / gen_rate + sim_s)  # noqa: E731
        paths = {
            "hf": per_hour(hf_gen, t_hf),
            "vLLM": per_hour(gen, times[True]),
            "vLLM generation + hf simulator": per_hour(gen, t_hf),
        }
        print(
            f"explain + score, features/hour (k = {args.explanations}, {len(exemplars)} exemplars each): "
            + ", ".join(f"{k} {v:.0f}" for k, v in paths.items())
        )
        print(
            f"ratio features/hour vLLM / hf: {paths['vLLM'] / paths['hf']:.2f}x; "
            f"vLLM generation + hf simulator / hf: {paths['vLLM generation + hf simulator'] / paths['hf']:.2f}x"
        )


if __name__ == "__main__":  # vLLM spawns its engine process: the guard keeps the child from rerunning this
    main()
