"""Training entry points: the tiny recipes train on CPU, resume after SIGKILL, and run as two DDP ranks.

Everything here is real: TRL trainers, a random tiny Llama (conftest `tiny_llama`), subprocesses
launched exactly as a user would (`python -m ...`, `accelerate launch ...`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_datasets import distilled_dataset

from neuroscribe.runs.train import RUN_INFO, STARTED
from neuroscribe.train import dpo, sft
from neuroscribe.train.args import parse_args
from neuroscribe.train.pipeline import load_training_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return distilled_dataset(tmp_path_factory.mktemp("distill"))


def overrides(model, data, out, **extra) -> list[str]:
    args = ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out)]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


def losses(run_dir) -> list[float]:
    state = json.loads((Path(run_dir) / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **extra}


@pytest.fixture(scope="module")
def sft_run(tiny_llama, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    args = parse_args(
        "sft", ["--config", str(ROOT / "recipes/tiny/sft.yaml"), *overrides(tiny_llama, data_dir, out, max_steps=6)]
    )
    return out, sft.main(*args)


def test_tiny_sft_recipe_trains_and_writes_a_run_folder(sft_run):
    run, info = sft_run
    seen = losses(run)
    assert len(seen) == 6 and all(math.isfinite(x) for x in seen)
    assert seen[-1] < seen[0]  # lr 1e-3 on a random model: the loss must fall within six steps
    assert info["global_step"] == 6 and info["peft"] and info["data_teacher"] == "hf:teacher"
    for name in ("adapter_model.safetensors", "tokenizer.json", "recipe.yaml", RUN_INFO, "README.md", "checkpoint-6"):
        assert (run / name).exists(), name
    assert "SFT with TRL, LoRA adapter, 6 optimizer steps" in (run / "README.md").read_text()
    # what eval's leak check reads, from any working directory: the dataset folder resolved
    started = json.loads((run / STARTED).read_text())
    assert info["dataset_path"] == started["dataset_path"] == str(Path(info["dataset"]).resolve())
    assert started["settings"]["learning_rate"] == 1e-3 and len(started["fingerprint"]) == 16


def test_prompt_completion_rows_train_on_the_completion_only(tiny_llama, data_dir, tmp_path):
    """The sft config's prompt/completion rows make TRL mask every prompt token out of the loss."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    script_args, *_ = parse_args(
        "sft", ["--config", str(ROOT / "recipes/tiny/sft.yaml"), *overrides(tiny_llama, data_dir, tmp_path)]
    )
    ds = load_training_dataset(script_args)["train"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    trainer = SFTTrainer(
        model=str(tiny_llama),
        args=SFTConfig(output_dir=str(tmp_path / "o"), bf16=False, report_to=[], max_length=2048),
        train_dataset=ds,
        processing_class=tok,
    )
    row = trainer.train_dataset[0]
    prompt_len = len(tok.apply_chat_template(ds[0]["prompt"], add_generation_prompt=True, tokenize=True))
    labels = (
        row["labels"]
        if "labels" in row
        else [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"])]
    )
    assert all(x == -100 for x in labels[:prompt_len])
    trained = [t for t in labels if t != -100]
    assert tok.decode(trained).startswith("Explanation: ")


def test_tiny_dpo_recipe_trains(tiny_llama, data_dir, tmp_path):
    args = parse_args(
        "dpo",
        [
            "--config",
            str(ROOT / "recipes/tiny/dpo.yaml"),
            *overrides(tiny_llama, data_dir, tmp_path / "run", max_steps=6),
        ],
    )
    info = dpo.main(*args)
    seen = losses(tmp_path / "run")
    assert len(seen) == 6 and all(math.isfinite(x) for x in seen)
    assert seen[0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    assert seen[-1] < seen[0]
    assert info["kind"] == "dpo" and (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_training_refuses_held_out_features(data_dir, tmp_path):
    import shutil

    leaky = tmp_path / "leaky"
    shutil.copytree(data_dir, leaky)
    train_feature = json.loads((leaky / "build.json").read_text())["splits"]["train"][0]
    with open(leaky / "heldout.txt", "a") as f:
        f.write(train_feature + "\n")
    script_args, *_ = parse_args(
        "sft", ["--config", str(ROOT / "recipes/tiny/sft.yaml"), *overrides("x", leaky, tmp_path / "o")]
    )
    with pytest.raises(ValueError, match=r"held-out feature.*heldout\.txt"):
        load_training_dataset(script_args)


KILLER = """
import os, signal, sys
from transformers import TrainerCallback
from neuroscribe.train import sft
from neuroscribe.train.args import parse_args

class KillAfterCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # runs once the checkpoint is on disk
        if state.global_step >= int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)

sft.main(*parse_args("sft", sys.argv[1:]), callbacks=[KillAfterCheckpoint()])
"""


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_step_count(tiny_llama, data_dir, tmp_path):
    """A run SIGKILLed right after checkpoint-2 is relaunched with the same command and finishes steps 3..6."""
    out = tmp_path / "run"
    cmd_args = [
        "--config",
        str(ROOT / "recipes/tiny/sft.yaml"),
        *overrides(tiny_llama, data_dir, out, max_steps=6, save_steps=2, disable_tqdm="true"),
    ]
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    first = subprocess.run(
        [sys.executable, str(killer), *cmd_args],
        env=env(KILL_AT="2"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == -9, first.stderr[-2000:]
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    second = subprocess.run(
        [sys.executable, "-m", "neuroscribe.train.sft", *cmd_args],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-2'}" in second.stdout
    logged = [ln for ln in (second.stdout + second.stderr).splitlines() if "'loss':" in ln]
    assert len(logged) == 4  # steps 3, 4, 5, 6 only
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_ddp_ranks_on_cpu_via_accelerate_launch(tiny_llama, data_dir, tmp_path):
    """`accelerate launch` with the DDP config and --num_processes 2 gives two gloo ranks; wandb logs once."""
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
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
        "neuroscribe.train.sft",
        "--config",
        str(ROOT / "recipes/tiny/sft.yaml"),
        *overrides(
            tiny_llama,
            data_dir,
            tmp_path / "run",
            max_steps=2,
            report_to="wandb",
            wandb_project="neuroscribe-test",
            disable_tqdm="true",
        ),
    ]
    proc = subprocess.run(cmd, env=env(WANDB_DIR=str(wandb_dir)), cwd=ROOT, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "[neuroscribe] rank 0 of 2" in out and "[neuroscribe] rank 1 of 2" in out
    runs = list(wandb_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 1, runs  # rank 0 only
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["train_batch_size"] == 2


@pytest.mark.slow
def test_sft_then_merge_then_dpo_on_two_ranks(sft_run, data_dir, tmp_path):
    """The tiny pipeline as the README runs it: SFT adapter -> merged model -> DPO via accelerate launch."""
    from neuroscribe.train.publish import publish

    merged = publish(sft_run[0], dry_run=tmp_path / "sft-merged", merge=True).folder
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
        "neuroscribe.train.dpo",
        "--config",
        str(ROOT / "recipes/tiny/dpo.yaml"),
        *overrides(merged, data_dir, tmp_path / "dpo", max_steps=3, disable_tqdm="true"),
    ]
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "[neuroscribe] rank 1 of 2" in out
    seen = losses(tmp_path / "dpo")
    assert len(seen) == 3 and all(math.isfinite(x) for x in seen) and seen[-1] != seen[0]
    info = json.loads((tmp_path / "dpo" / RUN_INFO).read_text())
    assert info["kind"] == "dpo" and info["base_model"] == str(merged)


@pytest.mark.slow
def test_tiny_recipe_as_written_trains_smollm2_with_lora(tmp_path):
    """The bundled SmolLM2-135M-Instruct, LoRA, two steps: the recipe as written but for data, output, length.

    Short prompts (5 exemplars) keep a step near a second on a 2-core CPU."""
    data_dir = distilled_dataset(tmp_path, n_features=6, n_top=5)
    args = parse_args(
        "sft",
        [
            "--config",
            str(ROOT / "recipes/tiny/sft.yaml"),
            "--dataset_name",
            str(data_dir),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
        ],
    )
    info = sft.main(*args)
    seen = losses(tmp_path / "run")
    assert info["base_model"] == "smollm2-135m-instruct" and len(seen) == 2 and all(map(math.isfinite, seen))
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_trainer_runs_on_gpu(strategy, tiny_llama, data_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / f"recipes/accelerate_configs/{strategy}.yaml"),
        "--num_processes",
        "1",
        "--main_process_port",
        "0",
        "-m",
        "neuroscribe.train.sft",
        "--config",
        str(ROOT / "recipes/tiny/sft.yaml"),
        *overrides(tiny_llama, data_dir, tmp_path / "run", max_steps=2, bf16="true", use_cpu="false"),
    ]
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert all(math.isfinite(x) for x in losses(tmp_path / "run"))


def test_ranks_that_do_not_form_a_group_are_stopped(monkeypatch, tmp_path):
    """Two processes launched without use_cpu on a CPU each see world size 1: two solo runs, one output_dir."""
    from trl import SFTConfig

    from neuroscribe.train.pipeline import setup_logging

    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to=[])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="use_cpu"):
        setup_logging(args)
