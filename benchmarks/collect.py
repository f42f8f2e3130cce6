"""Speed of `collect` against a plain forward pass over the same tokens (SmolLM2-135M, 1 thread).

Prints ratio = (hooks + mining) / (plain forward) for the mining pass, target <= 1.3, and the
end-to-end ratio including the hard-negative pass, finalisation and the Parquet write.
Features: every MLP neuron (both polarities) of four layers spread over the depth, including the
last layer, so collect cannot skip any layer the plain forward computes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collect.py [--windows 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from neuroscribe.corpus import context_prefix, iter_documents, iter_windows
from neuroscribe.distill.collect import CollectConfig, collect
from neuroscribe.models import load_model


def plain_forward_seconds(model, tok, windows: int, window: int, batch: int) -> float:
    prefix = context_prefix(tok)
    ws = list(iter_windows(tok, iter_documents(), window, windows))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ws), batch):
            ids = torch.tensor([prefix + list(w.token_ids) for w in ws[i : i + batch]], device=model.device)
            model(input_ids=ids, use_cache=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--features", default="mlp:3,12,21,29")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m-instruct", args.dtype, args.device)
    plain_forward_seconds(model, tok, args.batch_size, args.window, args.batch_size)  # warm-up
    plain = plain_forward_seconds(model, tok, args.windows, args.window, args.batch_size)
    del model
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CollectConfig(
            out=f"{tmp}/store",
            features=(args.features,),
            window=args.window,
            max_windows=args.windows,
            batch_size=args.batch_size,
            shard_windows=args.windows,
            dtype=args.dtype,
            device=args.device,
            progress=False,
        )
        start = time.perf_counter()
        collect(cfg)
        total = time.perf_counter() - start
        meta = json.loads(Path(f"{tmp}/store/meta.json").read_text())
    t = meta["timings"]
    n_features = sum(g["n_units"] * len(g["polarities"]) for g in meta["groups"])
    tokens = args.windows * args.window
    print(
        f"features {n_features}, windows {args.windows} x {args.window} tokens, {args.dtype} on {args.device}, 1 thread"
    )
    print(f"plain forward          {plain:7.2f} s  ({tokens / plain:6.0f} tok/s)")
    print(f"collect mining pass    {t['mine_s']:7.2f} s  ratio {t['mine_s'] / plain:.2f}  (target <= 1.3)")
    print(f"hard-negative pass     {t['hard_negatives_s']:7.2f} s")
    print(f"finalise + write       {total - t['mine_s'] - t['hard_negatives_s']:7.2f} s (incl. model load)")
    print(f"end-to-end collect     {total:7.2f} s  ratio {total / plain:.2f}")


if __name__ == "__main__":
    main()
