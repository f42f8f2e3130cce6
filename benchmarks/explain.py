"""Explain at the cost of batched generation: the teacher's throughput, the scoring's, and the whole
explain + score stage against a one-feature-at-a-time run of the same work.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explain.py [--features 4] [--k 4] [--dtype float32]

Workload: N live features of a small `collect` run of the bundled model (MLP neurons, builtin corpus),
the demo's prompt (highlighted, 6 exemplars), k samples per feature at temperature 1, 32 new tokens
at most; teacher and prompted all-at-once simulator are the bundled model, in one dtype. Prints
  (a) the teacher backend's generated tokens/s over a plain batched `model.generate` of the same
      prompts (each repeated k times, same batch size and sampling), target >= 0.8;
  (b) the scoring of a feature's k candidates (`simulate_many`, prefix-shared, batched over the
      shared exemplars) over a plain batched forward of the same (prompt, exemplar) sequences, as
      tokens/s, target >= 0.8;
  (c) `explain` (batched across features and samples, a feature's candidates scored together) over
      the same work done one request and one candidate at a time, target >= 3x.
No cache is shared between the runs: each starts from an empty one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from neuroscribe.backends import ChatRequest, SamplingParams, load_backend
from neuroscribe.cache import Cache
from neuroscribe.configs import CollectConfig, ExplainConfig, MiningConfig
from neuroscribe.distill.collect import collect
from neuroscribe.distill.explain import explain
from neuroscribe.models import DEFAULT_MODEL, load_shared, warn_unless_one_thread
from neuroscribe.prompts import explainer_messages, parse_explanation, simulator_prompt
from neuroscribe.records import Explanation
from neuroscribe.runs.store import ExemplarStore
from neuroscribe.scorers import simulate_and_score
from neuroscribe.simulators.allatonce import LocalSimulator

STYLE, MAX_EXEMPLARS, MAX_TOKENS = "highlighted", 6, 32


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input ids, attention mask, width) of `rows` padded on the left to the longest."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, width


def plain_generate(model, tok, prompts: list[list[int]], k: int, batch: int) -> tuple[float, int]:
    """(seconds, generated tokens up to each row's EOS) of `model.generate` over every prompt k times."""
    rows = [p for p in prompts for _ in range(k)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n_tokens, start = 0, time.perf_counter()
    for i in range(0, len(rows), batch):
        ids, mask, width = left_padded(rows[i : i + batch], pad)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=MAX_TOKENS,
                pad_token_id=pad,
            )
        for row in out[:, width:].tolist():
            n_tokens += next((j + 1 for j, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return time.perf_counter() - start, n_tokens


def plain_forward(model, tok, sequences: list[list[int]], batch: int) -> float:
    """Seconds of a left-padded batched forward over `sequences` (no prefix sharing)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    start = time.perf_counter()
    for i in range(0, len(sequences), batch):
        ids, mask, _ = left_padded(sequences[i : i + batch], pad)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="float32", help="one dtype throughout (float32 is fastest on AMD CPUs)")
    ap.add_argument("--features", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    warn_unless_one_thread()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    collect(
        CollectConfig(
            out=str(tmp / "store"),
            model=args.model,
            features=("mlp:6:0-15",),
            window=24,
            max_windows=128,
            dtype=args.dtype,
            mining=MiningConfig(top_k=12, per_quantile=1, random_k=12),
            progress=False,
        )
    )
    store = ExemplarStore(tmp / "store")
    keys = store.keys()[: args.features]
    records = {k: store.get(k) for k in keys}
    model, tok = load_shared(args.model, args.dtype)
    params = SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, seed=0)
    messages = {k: explainer_messages(r, STYLE, max_exemplars=MAX_EXEMPLARS) for k, r in records.items()}

    # (a) teacher generation
    backend = load_backend(f"hf:{args.model}", None, loaded=(model, tok), batch_size=args.batch_size)
    requests = [ChatRequest(tuple(messages[k]), params, sample_index=i) for k in keys for i in range(args.k)]
    prompt_ids = [backend._chat_ids(ChatRequest(tuple(messages[k]), params)) for k in keys]  # the same token ids
    plain_generate(model, tok, prompt_ids[:1], 1, 1)  # warm-up
    t_backend, completions = timed(lambda: backend.generate(requests))
    backend_tokens = sum(c.tokens_out for c in completions)
    t_plain, plain_tokens = plain_generate(model, tok, prompt_ids, args.k, args.batch_size)
    gen_fraction = (backend_tokens / t_backend) / (plain_tokens / t_plain)
    print(
        f"teacher backend: {backend_tokens} tokens in {t_backend:.1f} s; plain generate: {plain_tokens} tokens "
        f"in {t_plain:.1f} s",
        flush=True,
    )

    # (b) scoring a feature's k candidates over its shared exemplars
    sim = LocalSimulator(model, tok, batch_size=args.batch_size)
    candidates = {
        k: [parse_explanation(c.text).text or "x" for c in completions[j * args.k : (j + 1) * args.k]]
        for j, k in enumerate(keys)
    }
    t_sim = 0.0
    sequences = []
    for k in keys:
        exemplars = records[k].select("score")
        t, _ = timed(lambda k=k, exemplars=exemplars: sim.simulate_many(candidates[k], exemplars))
        t_sim += t
        for text in candidates[k]:
            for e in exemplars:
                p = simulator_prompt(text, e.tokens)
                sequences.append(list(sim.context_ids) + sim._encode(p.prefix) + list(sim._encode_body(p)[0]))
    t_forward = plain_forward(model, tok, sequences, args.batch_size)
    score_fraction = t_forward / t_sim
    print(
        f"scoring: {len(sequences)} (candidate, exemplar) rows, simulate_many {t_sim:.1f} s, plain forward "
        f"{t_forward:.1f} s",
        flush=True,
    )

    # (c) the explain + score stage, batched vs one at a time (same features, k, teacher and simulator)
    spec = f"hf:{args.model}"
    cfg = ExplainConfig(
        store=str(tmp / "store"),
        out=str(tmp / "explain"),
        teacher=spec,
        simulator=spec,
        k=args.k,
        prompt_style=STYLE,
        max_exemplars=MAX_EXEMPLARS,
        max_tokens=MAX_TOKENS,
        dtype=args.dtype,
        features=tuple(keys),
        cache=str(tmp / "batched.sqlite"),
        progress=False,
    )
    t_batched, _ = timed(lambda: explain(cfg))
    print(f"explain + score batched: {t_batched:.1f} s", flush=True)
    one = load_backend(spec, Cache(tmp / "single.sqlite"), loaded=(model, tok), batch_size=1)

    def one_at_a_time():
        for k in keys:
            texts = [one.generate([r])[0].text for r in requests if r.messages == tuple(messages[k])]
            for text in texts:
                explanation = Explanation(k, parse_explanation(text).text or "x", spec)
                simulate_and_score(sim, explanation, records[k], "score")

    t_single, _ = timed(one_at_a_time)

    print(
        f"model {args.model}  dtype {args.dtype}  threads {torch.get_num_threads()}  "
        f"{len(keys)} features x k={args.k}, batch {args.batch_size}"
    )
    print(f"explain + score: batched {t_batched:.1f} s, one at a time {t_single:.1f} s")
    print(f"(a) teacher tokens/s = {gen_fraction:.2f} of a plain batched generate (target >= 0.8)")
    print(f"(b) scoring tokens/s = {score_fraction:.2f} of a plain batched forward (target >= 0.8)")
    print(f"(c) explain + score, batched vs one at a time: {t_single / t_batched:.2f}x (target >= 3)")


if __name__ == "__main__":
    main()
