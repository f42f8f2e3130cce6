"""The demo's wiring, end to end on a tiny random model (the real demo uses SmolLM2; see README)."""

from __future__ import annotations

import json
import time

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage_and_a_rerun_reuses_everything(tiny_llama, tmp_path):
    from neuroscribe.eval.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=tmp_path / "demo",
        model=str(tiny_llama),
        features="mlp:0-1:0-5",
        windows=96,
        k=2,
        dtype="float32",
        max_exemplars=4,
        train_steps=1,
    )
    run_demo(cfg)
    ev = cfg.out / "eval"
    for name in ("results.json", "report.md", "browser.html"):
        assert (ev / name).stat().st_size > 0, name
    assert list((ev / "plots").glob("*.png"))
    results = json.loads((ev / "results.json").read_text())
    held = (cfg.out / "distill" / "heldout.txt").read_text().split()
    assert sorted(f["feature"] for f in results["features"]) == sorted(held)
    assert (cfg.out / "dpo" / "adapter_config.json").exists()
    start = time.perf_counter()
    run_demo(cfg)  # every stage finds its output; eval re-reads its cache
    assert time.perf_counter() - start < 60
