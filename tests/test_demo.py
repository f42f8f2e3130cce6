"""The demo's wiring, end to end on a tiny random Llama (the real demo uses SmolLM2; numbers in the
README). A random model explains and simulates nothing, so this checks stages, files and reuse, not
scores: the calibration and headline computations have their own tests (test_calibration, test_eval)."""

from __future__ import annotations

import json
import time

import pytest


def tiny_demo(model, out, **overrides):
    from neuroscribe.configs import DemoConfig

    settings = dict(
        out=str(out),
        model=str(model),
        features="mlp:0-1:0-2",
        windows=64,
        window=16,
        planted_windows=300,
        planted_explainer=6,
        planted_heldout=4,
        heldout_real=1,
        simulator_steps=2,
        simulator_batch=2,
        simulator_per_rule=1,
        simulator_random=1,
        simulator_windows=300,
        calibration_wrong=2,
        prompted_rules=1,
        k=2,
        dtype="float32",
        threads=1,
        max_exemplars=4,
        max_tokens=8,
        threshold=-1.0,
        sft_steps=1,
        sft_batch=1,
        judge_features=2,
        reliability_features=2,
    )
    return DemoConfig(**{**settings, **overrides})


@pytest.mark.slow
def test_demo_runs_every_stage_and_a_rerun_reuses_everything(tiny_llama, tmp_path, monkeypatch):
    from neuroscribe.eval.demo import run_demo

    monkeypatch.setenv("NEUROSCRIBE_CACHE", str(tmp_path / "user-cache"))
    cfg = tiny_demo(tiny_llama, tmp_path / "demo", dpo_steps=1)
    run_demo(cfg)
    out = tmp_path / "demo"
    pairs = json.loads((out / "distill" / "build.json").read_text())["rows"]["preference"]["train"]
    evals = [out / "eval", out / "eval-dpo"] if pairs else [out / "eval"]  # DPO runs when it has pairs
    assert (out / "eval-dpo" / "report.md").exists() == bool(pairs) == (out / "dpo" / "adapter_config.json").exists()
    for ev in evals:  # the student after SFT (and after DPO), each reported
        for name in ("results.json", "report.md", "browser.html"):
            assert (ev / name).stat().st_size > 0, ev / name
        assert {p.name for p in (ev / "plots").glob("*.png")} >= {"calibration.png", "training_loss.png"}
    results = json.loads((out / "eval" / "results.json").read_text())
    held = (out / "distill" / "heldout.txt").read_text().split()
    assert sorted(f["feature"] for f in results["features"]) == sorted(held)
    truth = {json.loads(line)["feature"] for line in (out / "truth.jsonl").read_text().splitlines()}
    planted_held = [k for k in held if k.startswith("planted/")]
    assert planted_held and set(planted_held) <= truth  # known-answer features are in the eval
    training = json.loads((out / "distill" / "build.json").read_text())["splits"]["train"]
    assert not set(training) & set(held)
    calibration = json.loads((out / "calibration.json").read_text())
    sims = calibration["simulators"]  # the fine-tuned and the prompted simulator, each on the held-out rules
    assert len(sims) == 2 and all(v["rules"] and v["n_rules"] == len(v["rules"]) for v in sims.values())
    report = (out / "eval" / "report.md").read_text()
    assert report.startswith("# ") and "**Did the student get better?**" in report
    # the validity gates: near misses of the rule's family and paraphrases scored, the verdict opens the report
    for sim in sims.values():
        assert {g["name"] for g in sim["gates"]} == {"near_miss", "unseen_families", "paraphrases"}
        assert all(len(r["paraphrase_scores"]) == 2 for r in sim["rules"])
    opening = report.split("\n\n")[1]
    assert opening.startswith(("**The judge FAILED", "The judge passed")), opening[:200]
    assert "## Validity gates (read these before any score)" in report
    demo = json.loads((out / "demo.json").read_text())
    assert demo["status"] == "complete" and [s["stage"] for s in demo["stages"]][:3] == [
        "collect",
        "plant",
        "train simulator",
    ]
    stages = [s["stage"] for s in demo["stages"]]  # the lanes: run at once, each stage still recorded
    assert stages.index("calibrate") < stages.index("explain + score") < stages.index("distill")
    assert "1 torch thread" in (out / "logs" / "calibrate.log").read_text()  # its own process, one thread
    assert demo["total_seconds"] <= sum(s["seconds"] for s in demo["stages"]) + 5
    simulators = list((tmp_path / "user-cache" / "demo-simulators").iterdir())
    assert len(simulators) == 1 and (simulators[0] / "simulator.json").exists()  # finished, then renamed

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "demo.json"}
    start = time.perf_counter()
    run_demo(cfg)  # every stage finds its output, nothing is rewritten
    assert time.perf_counter() - start < 60
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [str(p) for p in before if after[p] != before[p] and "cache.sqlite" not in p.name]
    assert not changed
    assert json.loads((out / "demo.json").read_text())["stages"][2]["result"].startswith("reused ")


def test_a_rerun_with_other_settings_is_refused_before_any_stage(tiny_llama, tmp_path, monkeypatch):
    from neuroscribe.eval.demo import run_demo

    monkeypatch.setenv("NEUROSCRIBE_CACHE", str(tmp_path / "user-cache"))
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"config": {"k": 9, "sft_steps": 1}, "status": "running"}))
    with pytest.raises(ValueError, match=r"demo\.json: field config differs.*\(k\)"):
        run_demo(tiny_demo(tiny_llama, out))
    assert sorted(p.name for p in out.iterdir()) == ["demo.json"]  # nothing started


@pytest.mark.slow
def test_the_proof_shape_seeds_a_format_control_and_an_unseen_family(tiny_llama, tmp_path, monkeypatch):
    """The proof configuration's machinery on the tiny model: a family the simulator never trains on,
    paraphrase-only graded training rows with mismatched ones for a set number of epochs, two student
    seeds and a format control, the primary comparison declared and given a seeded interval."""
    from neuroscribe.eval.demo import PROOF, proof_config, run_demo

    monkeypatch.setenv("NEUROSCRIBE_CACHE", str(tmp_path / "user-cache"))
    cfg = tiny_demo(
        tiny_llama,
        tmp_path / "proof",
        planted_explainer=8,
        planted_heldout=8,
        unseen_families=("class",),  # the first family in order: the held-out cap keeps some of it
        planted_graded=True,
        simulator_phrasings="paraphrases",
        simulator_others=1,
        simulator_epochs=0.02,
        student_seeds=2,
        format_control=True,
        primary="student_vs_format_control",
        judge_features=0,
    )
    run_demo(cfg)
    out = tmp_path / "proof"
    assert all((out / name / "adapter_config.json").exists() for name in ("sft", "sft-s1", "sft-control"))
    results = json.loads((out / "eval" / "results.json").read_text())
    sim = results["provenance"]["simulators"][0]
    assert results["config"]["primary"] == "student_vs_format_control"
    assert results["seeded"][sim]["student_vs_format_control"]["seeds"] == 2
    assert "student_vs_format_control" in results["comparisons"][sim]
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    held = set(results["provenance"].get("heldout_features") or [f["feature"] for f in results["features"]])
    assert any(t["family"] == "class" and t["feature"] in held for t in truth), "an unseen family is held out"
    gates = {g["name"]: g for g in json.loads((out / "calibration.json").read_text())["simulators"][sim]["gates"]}
    assert gates["unseen_families"]["n"] > 0
    import math

    import pyarrow.parquet as pq

    rows = pq.read_metadata(out / "simulator-data" / "stage1" / "train.parquet").num_rows
    demo = json.loads((out / "demo.json").read_text())
    sim_stage = next(s for s in demo["stages"] if s["stage"] == "train simulator")
    assert f", {math.ceil(0.02 * rows / 2)} steps ->" in sim_stage["result"]  # from the epochs, not the steps
    # the preset itself: every field it sets is a DemoConfig field, a hand-given value wins
    from neuroscribe.configs import DemoConfig

    proof = proof_config(DemoConfig(proof=True, k=5))
    assert proof.k == 5 and proof.student_seeds == PROOF["student_seeds"] and proof.out == "runs/proof"
