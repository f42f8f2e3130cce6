"""Speed of `collect` end to end against a plain forward pass over the same tokens (SmolLM2-135M).

Headline: end-to-end ratio = (collect: model load, mining with hard negatives in the same pass,
finalise, Parquet write) / (plain batched forward over the same token rows, each window with the
context tokens collect reads it after, same dtype), target <= 1.3.
Below it: the per-phase times, and peak RSS of collect at two corpus sizes (the second 4x larger;
memory is bounded by features x slots, so it should stay put). `--compare-dtype bfloat16` adds how
far a bf16 collection's stored activations are from fp32 ones on a small corpus.
Features: every MLP neuron (both polarities) of four layers spread over the depth, including the
last layer, so collect cannot skip any layer the plain forward computes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collect.py [--windows 256] [--compare-dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from neuroscribe.corpus import context_prefix, iter_documents, iter_windows
from neuroscribe.distill.collect import CollectConfig, collect
from neuroscribe.models import load_model
from neuroscribe.runs.store import ExemplarStore


def plain_forward_seconds(model, tok, windows: int, window: int, batch: int, context: int) -> float:
    """A plain batched forward over exactly the token rows collect reads: each window after the
    tokenizer's prefix and its `context` preceding tokens."""
    prefix = context_prefix(tok)
    ws = list(iter_windows(tok, iter_documents(), window, windows, context))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ws), batch):
            rows = [prefix + list(w.context) + list(w.token_ids) for w in ws[i : i + batch]]
            ids = torch.tensor(rows, device=model.device)
            model(input_ids=ids, use_cache=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_collect(args, windows: int, out: str, dtype: str, features: str) -> dict:
    """One collect in this process; its timings (the caller runs it in a child to read its peak RSS)."""
    torch.set_num_threads(1)
    cfg = CollectConfig(
        out=out,
        features=(features,),
        window=args.window,
        max_windows=windows,
        batch_size=args.batch_size,
        shard_windows=windows,
        dtype=dtype,
        device=args.device,
        progress=False,
    )
    start = time.perf_counter()
    collect(cfg)
    total = time.perf_counter() - start
    meta = ExemplarStore(out).meta
    t = meta["timings"]
    n = sum(g["n_units"] * len(g["polarities"]) for g in meta["groups"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"total": total, "mine": t["mine_s"], "finalize": t["finalize_s"], "features": n, "rss_mb": rss}


def child(args, windows: int, out: str, dtype: str | None = None, features: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(windows), "--child-out", out, "--window", str(args.window)]
    cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
    cmd += ["--dtype", dtype or args.dtype, "--features", features or args.features]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare_dtypes(args, dtype: str, tmp: str) -> str:
    """Stored activations of a `dtype` collection vs fp32 on a small corpus: relative error and top overlap."""
    import pyarrow.parquet as pq

    features = "mlp:12"
    for name in ("float32", dtype):
        child(args, 32, f"{tmp}/{name}", name, features)
    tables = [pq.read_table(f"{tmp}/{name}/exemplars.parquet").to_pandas() for name in ("float32", dtype)]
    key = ["feature", "source", "window_id"]
    ref, other = (t[t.source == "top"].set_index(key) for t in tables)
    both = ref.index.intersection(other.index)
    a = torch.tensor([list(v) for v in ref.loc[both, "activations"]])
    b = torch.tensor([list(v) for v in other.loc[both, "activations"]])
    rel = float((a - b).abs().max() / a.abs().max())
    return (
        f"{dtype} vs float32 (32 windows, 3072 features): top windows shared {len(both) / len(ref):.3f}, "
        f"max |diff| of stored activations {rel:.4f} of the largest"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--features", default="mlp:3,12,21,29")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compare-dtype", default=None, help="also compare stored activations with this dtype's")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_collect(args, args.child, args.child_out, args.dtype, args.features)))
        return
    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m-instruct", args.dtype, args.device)
    context = CollectConfig(out="").context
    plain_forward_seconds(model, tok, args.batch_size, args.window, args.batch_size, context)  # warm-up
    plain = plain_forward_seconds(model, tok, args.windows, args.window, args.batch_size, context)
    del model
    with tempfile.TemporaryDirectory() as tmp:
        small = child(args, args.windows // 4, f"{tmp}/small")
        big = child(args, args.windows, f"{tmp}/big")
        dtypes = compare_dtypes(args, args.compare_dtype, tmp) if args.compare_dtype else None
    tokens = args.windows * args.window
    print(f"features {big['features']}, windows {args.windows} x {args.window} tokens, {args.dtype} on {args.device}")
    print(f"end-to-end collect     {big['total']:7.2f} s  ratio {big['total'] / plain:.2f}  (target <= 1.3)")
    print(f"  plain forward        {plain:7.2f} s  ({tokens / plain:6.0f} tok/s)")
    print(f"  mining pass          {big['mine']:7.2f} s  ratio {big['mine'] / plain:.2f} (hard negatives included)")
    print(f"  finalise             {big['finalize']:7.2f} s")
    print(f"  load + write         {big['total'] - big['mine'] - big['finalize']:7.2f} s")
    print(
        f"peak RSS               {small['rss_mb']:7.0f} MB at {args.windows // 4} windows, {big['rss_mb']:.0f} MB at "
        f"{args.windows} (ratio {big['rss_mb'] / small['rss_mb']:.2f})"
    )
    if dtypes:
        print(dtypes)


if __name__ == "__main__":
    main()
