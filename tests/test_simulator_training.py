"""Simulator data, training and use: simulator-data rows, the tiny recipe trains a real tiny Llama,
the run loads back as `finetuned:PATH` and scores held-out features through `score`.

Features are planted rules on the builtin corpus (truth known); candidate explanations are written
with known scores (the teacher and the scoring simulator are what this file does not test).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from test_datasets import candidate, rows_of, write_scored_dir

from neuroscribe.distill.planted.features import RULES, planted_features
from neuroscribe.distill.simulator_data import SimulatorDataConfig, build_simulator_data, simulator_data_command
from neuroscribe.runs.simulator import read_simulator_file
from neuroscribe.runs.train import RUN_INFO
from neuroscribe.simulators.finetuned_format import activation_classes
from neuroscribe.train import simulator
from neuroscribe.train.args import parse_args, recipe_kind

ROOT = Path(__file__).resolve().parents[1]
RULE_NAMES = ("digits", "comma", "colon", "parentheses", "capitalised", "after_the", "ing_words", "long_words")


@pytest.fixture(scope="module")
def planted(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    rules = [RULES[n] for n in RULE_NAMES]
    return rules, planted_features(tok, rules, window=16, n_top=6, n_random=6, max_windows=800)


@pytest.fixture(scope="module")
def scored(planted, tmp_path_factory):
    """A scored-candidates folder: per feature the true explanation (score 0.8), two others (0.4, 0.1),
    an unparseable reply; and the exemplar store its meta names."""
    from neuroscribe.runs.store import write_store

    rules, feats = planted
    root = tmp_path_factory.mktemp("scored")
    write_store(root / "store", feats, {"model": "tiny-subject"})
    cands = {}
    for i, (rule, f) in enumerate(zip(rules, feats)):
        key = f.feature.key
        others = [rules[(i + 1) % len(rules)].explanation, rules[(i + 2) % len(rules)].explanation]
        cands[key] = [
            candidate(key, rule.explanation, 0.8, 0),
            candidate(key, others[0], 0.4, 1),
            candidate(key, others[1], 0.1, 2),
            candidate(key, "garbage", 0.99, 3, ok=False),
        ]
    write_scored_dir(root, cands, store=str(root / "store"))
    return root, cands


@pytest.fixture(scope="module")
def data_dir(scored, planted, tmp_path_factory):
    rules, feats = planted
    heldout = [feats[-1].feature.key, feats[-2].feature.key]
    out = tmp_path_factory.mktemp("simdata") / "data"
    (out.parent / "heldout.txt").write_text("\n".join(heldout) + "\n")
    simulator_data_command(
        SimulatorDataConfig(
            str(scored[0]),
            str(out),
            random_per_exemplar=2,
            heldout_file=str(out.parent / "heldout.txt"),
            validation_fraction=0.15,
        ),
        echo=lambda s: None,
    )
    return out


def test_simulator_data_rows_hold_out_features_and_label_by_the_feature_max(data_dir, planted, scored):
    _, feats = planted
    by_key = {f.feature.key: f for f in feats}
    build = json.loads((data_dir / "build.json").read_text())
    heldout = set((data_dir / "heldout.txt").read_text().split())
    assert heldout == {feats[-1].feature.key, feats[-2].feature.key} == set(build["splits"]["heldout"])
    stage1, stage2 = rows_of(data_dir, "stage1"), rows_of(data_dir, "stage2")
    for ds in (stage1, stage2):
        for part in ds.values():
            assert not heldout & set(part["feature"])
    train_keys = build["splits"]["train"]
    n_exemplars = sum(len(by_key[k].exemplars) for k in train_keys)
    assert len(stage1["train"]) == 2 * n_exemplars  # two random candidates per exemplar
    assert len(stage2["train"]) == n_exemplars
    texts = {r.explanation for r in RULES.values()}
    assert set(stage2["train"]["explanation"]) <= texts and "garbage" not in set(stage1["train"]["explanation"])
    assert set(stage2["train"]["explanation_score"]) == {0.8}  # the best parseable one, never the 0.99 garbage
    for row in stage1["train"].select(range(20)):
        record = by_key[row["feature"]]
        e = next(x for x in record.exemplars if x.window_id == row["window_id"])
        assert row["tokens"] == list(e.tokens)
        assert row["classes"] == activation_classes(e.activations, record.max_activation)
    with pytest.raises(FileExistsError):
        build_simulator_data(SimulatorDataConfig(str(scored[0]), str(data_dir)))


def test_random_candidates_vary_and_seed_is_stable(scored, planted, tmp_path):
    a = build_simulator_data(SimulatorDataConfig(str(scored[0]), str(tmp_path / "a"), seed=3))
    b = build_simulator_data(SimulatorDataConfig(str(scored[0]), str(tmp_path / "b"), seed=3))
    ra, rb = rows_of(a.out_dir, "stage1")["train"], rows_of(b.out_dir, "stage1")["train"]
    assert ra["explanation"] == rb["explanation"]
    assert len(set(ra["explanation"])) > len(set(rows_of(a.out_dir, "stage2")["train"]["explanation"]))


def planted_by_key(planted) -> dict:
    return {f.feature.key: f for f in planted[1]}


def losses(run) -> list[float]:
    state = json.loads((Path(run) / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def recipe_args(model, data, out, **extra) -> list[str]:
    args = [
        "--config",
        str(ROOT / "recipes/tiny/simulator.yaml"),
        "--model_name_or_path",
        str(model),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
    ]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.fixture(scope="module")
def run(tiny_llama, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("simrun") / "run"
    info = simulator.main(*parse_args("simulator", recipe_args(tiny_llama, data_dir, out, max_steps=10)))
    return out, info


def test_tiny_recipe_trains_and_writes_a_loadable_run(run):
    out, info = run
    seen = losses(out)
    assert len(seen) == 10 and all(map(math.isfinite, seen))
    assert sum(seen[-3:]) < sum(seen[:3])  # lr 1e-3 on a random model: the loss falls
    assert info["kind"] == "simulator" and info["peft"] and info["data_teacher"] == "hf:teacher"
    for name in (
        "adapter_model.safetensors",
        "tokenizer.json",
        "simulator.json",
        RUN_INFO,
        "README.md",
        "checkpoint-10/simulator.json",
    ):
        assert (out / name).exists(), name
    fmt = read_simulator_file(out)
    assert list(fmt.class_token_ids) == info["class_token_ids"] and fmt.run_id == info["run_id"]
    build = json.loads((Path(info["dataset"]) / "build.json").read_text())
    trained = set(build["splits"]["train"]) | set(build["splits"]["validation"])
    assert set(fmt.trained_features) == trained and not trained & set(build["splits"]["heldout"])
    assert set(fmt.trained_splits) == {"explain", "score", "test"}  # every split of those features was seen
    assert "Per-token activation simulator" in (out / "README.md").read_text()


def test_finetuned_spec_scores_held_out_features_through_score(run, scored, data_dir, planted, tmp_path):
    from neuroscribe.distill.score import ScoreConfig, score
    from neuroscribe.simulators import load_simulator

    out, info = run
    heldout = (data_dir / "heldout.txt").read_text().split()
    rules = {RULES[n].feature.key: RULES[n] for n in RULE_NAMES}
    lines = [json.dumps({"feature": k, "explanation": rules[k].explanation}) for k in heldout]
    (tmp_path / "expl.jsonl").write_text("\n".join(lines) + "\n")
    result = score(
        ScoreConfig(
            str(tmp_path / "expl.jsonl"),
            str(scored[0] / "store"),
            str(tmp_path / "scored"),
            simulator=f"finetuned:{out}",
            split="test",
            progress=False,
        )
    )
    assert [s.explanation.feature for s in result] == heldout
    for s in result:  # every test exemplar is simulated, none unreadable
        n_test = len(planted_by_key(planted)[s.explanation.feature].select("test"))
        assert s.status == "ok" and math.isfinite(s.score) and s.n_parse_failures == 0
        assert s.n_exemplars == n_test == s.n_top_held + s.n_random_held > 0
    summary = json.loads((tmp_path / "scored" / "summary.json").read_text())
    assert summary["simulator"] == f"finetuned:{out}#{info['run_id'][:12]}"
    sim = load_simulator(f"finetuned:{out}#{info['run_id'][:8]}", dtype="bfloat16")  # a pinned run loads ...
    assert sim.format.run_id == info["run_id"] and sim.spec.endswith("@bfloat16")
    assert load_simulator(sim.spec).format.run_id == info["run_id"]  # a spec loads back
    with pytest.raises(ValueError, match="run_id"):  # ... another run does not
        load_simulator(f"finetuned:{out}#ffffffff")


def test_resume_and_stage_two_continue_the_run(run, tiny_llama, data_dir, tmp_path, capsys):
    """Resume: a run killed after checkpoint-2 (what a kill leaves: that checkpoint and the started
    stamp, no later files) is relaunched with the same settings and continues from checkpoint-2; a
    relaunch of the finished run with more steps is refused, never trained past its end. Stage 2: a
    trained simulator as the model keeps ids and adapter."""
    import shutil

    from neuroscribe.runs.train import STARTED

    out = tmp_path / "resumed"
    args = recipe_args(tiny_llama, data_dir, out, max_steps=4, save_steps=2)
    simulator.main(*parse_args("simulator", args))
    for p in out.iterdir():  # back to the moment after checkpoint-2 was saved
        if p.name not in ("checkpoint-2", STARTED):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    capsys.readouterr()
    simulator.main(*parse_args("simulator", args))
    assert f"resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="finished training run"):
        simulator.main(*parse_args("simulator", recipe_args(tiny_llama, data_dir, out, max_steps=6, save_steps=2)))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    stage1, info1 = run
    info2 = simulator.main(
        *parse_args(
            "simulator",
            recipe_args(stage1, data_dir, tmp_path / "stage2", max_steps=2, dataset_config="stage2", lora_r=4),
        )
    )
    assert info2["class_token_ids"] == info1["class_token_ids"] and info2["run_id"] != info1["run_id"]
    assert info2["simulator_base_model"] == str(tiny_llama)
    # the stage-1 adapter (r=16) was trained further; a fresh one would have the overridden r=4
    assert json.loads((tmp_path / "stage2" / "adapter_config.json").read_text())["r"] == 16


def test_publish_carries_simulator_json_and_the_simulator_card(run, tmp_path):
    from neuroscribe.simulators import load_simulator
    from neuroscribe.train.publish import publish

    folder = publish(run[0], dry_run=tmp_path / "merged", merge=True).folder
    assert (folder / "simulator.json").exists() and not (folder / "adapter_config.json").exists()
    assert "activation-simulator" in (folder / "README.md").read_text()
    assert load_simulator(f"finetuned:{folder}").format.run_id == run[1]["run_id"]


def test_sft_only_options_and_recipe_kind(tiny_llama, data_dir, tmp_path):
    assert recipe_kind(ROOT / "recipes/tiny/simulator.yaml") == "simulator"
    assert recipe_kind(ROOT / "recipes/llama-3.1-8b-simulator/stage1/config_lora.yaml") == "simulator"
    args = parse_args("simulator", recipe_args(tiny_llama, data_dir, tmp_path / "o", packing="true"))
    with pytest.raises(ValueError, match="SFT-only option.*packing"):
        simulator.main(*args)


@pytest.mark.slow
def test_two_ddp_ranks_via_accelerate_launch(tiny_llama, data_dir, tmp_path):
    """The launch line of the README: two gloo ranks on the CPU, the masked class loss under DDP."""
    import os

    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes/accelerate_configs/ddp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "neuroscribe.train.simulator",
        *recipe_args(tiny_llama, data_dir, tmp_path / "run", max_steps=3),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "[neuroscribe] rank 1 of 2" in text
    seen = losses(tmp_path / "run")
    assert len(seen) == 3 and all(map(math.isfinite, seen))
    assert (tmp_path / "run" / "simulator.json").exists()
