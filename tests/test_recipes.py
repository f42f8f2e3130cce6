"""Recipes stay valid: every YAML parses with unknown keys rejected, READMEs name real files, and the
accelerate configs go through accelerate's own launch validation (DeepSpeed JSON checked by DeepSpeed)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from neuroscribe.train.args import make_parser, parse_args, parse_recipe, recipe_kind

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)
ACCELERATE = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))


def test_the_expected_recipes_exist():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    assert {"tiny/sft.yaml", "tiny/dpo.yaml"} | {
        f"llama-3.1-8b-explainer/{k}/config_{v}.yaml" for k in ("sft", "dpo") for v in ("lora", "full")
    } <= names
    assert {p.stem for p in ACCELERATE} >= {"ddp", "zero2", "zero3", "fsdp"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_with_unknown_keys_rejected(recipe):
    script_args, training_args, model_args, _ = parse_recipe(recipe)
    assert type(training_args).__name__ == ("DPOConfig" if recipe_kind(recipe) == "dpo" else "SFTConfig")
    assert model_args.model_name_or_path and script_args.dataset_name and training_args.output_dir
    assert training_args.max_length, "a recipe must state max_length (prompts are long)"
    text = recipe.read_text()
    blocks = [m.group(1) for m in re.finditer(r"^# (Model|Data|Training) arguments", text, re.M)]
    assert blocks == ["Model", "Data", "Training"], "three commented blocks: model, data, training"
    assert not re.search(r"(?m)^\s*(hub_token|.*api_key)\s*:", text), "no secrets in recipes"


def test_a_stale_key_is_rejected_naming_the_file(tmp_path):
    stale = tmp_path / "stale.yaml"
    stale.write_text((ROOT / "recipes/tiny/sft.yaml").read_text() + "max_seq_length: 512\n")  # renamed max_length
    with pytest.raises(ValueError, match=r"stale\.yaml.*max_seq_length"):
        parse_recipe(stale)
    with pytest.raises((ValueError, SystemExit)):
        parse_args("sft", ["--config", str(ROOT / "recipes/tiny/sft.yaml"), "--lerning_rate", "1"])


def test_cli_overrides_beat_the_file_and_help_renders():
    _, training_args, model_args, source = parse_recipe(
        ROOT / "recipes/tiny/sft.yaml", overrides=["--learning_rate", "0.25", "--lora_r", "4"]
    )
    assert training_args.learning_rate == 0.25 and model_args.lora_r == 4
    assert source.overrides[:2] == ("--learning_rate", "0.25")
    for kind in ("sft", "dpo"):
        assert "--wandb_project" in make_parser(kind).format_help()


def test_readme_commands_name_files_that_exist():
    readmes = sorted((ROOT / "recipes").rglob("README.md"))
    assert len(readmes) >= 2
    for readme in readmes:
        text = readme.read_text()
        paths = set(re.findall(r"recipes/[\w./-]+\.yaml", text))
        assert paths, readme
        for p in paths:
            assert (ROOT / p).exists(), f"{readme} names {p}"
        for module in re.findall(r"-m (neuroscribe\.train\.\w+)", text):
            assert (ROOT / "train" / f"{module.rsplit('.', 1)[1]}.py").exists(), module


def _launch_env(config: Path) -> tuple[object, dict]:
    """What `accelerate launch --config_file X --num_processes 2` validates and exports to the ranks."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "--num_processes", "2", "x.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


@pytest.mark.parametrize("config", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_config_passes_accelerates_launch_validation(config, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig

    ClusterConfig.from_yaml_file(str(config))  # unknown keys raise TypeError
    data = yaml.safe_load(config.read_text())
    assert data["num_machines"] == 1 and data["mixed_precision"] == "bf16"
    args, env = _launch_env(config)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if config.stem == "ddp":
        assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp
    elif config.stem == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_configs_validate_with_deepspeed(stage, monkeypatch):
    """ZeRO JSON as accelerate builds it, "auto" values filled from the 8B recipe, checked by DeepSpeed."""
    pytest.importorskip("deepspeed")
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    # training args first: with DeepSpeed env set, TrainingArguments would try to start DeepSpeed
    _, training_args, _, _ = parse_recipe(ROOT / "recipes/llama-3.1-8b-explainer/sft/config_full.yaml")
    _, env = _launch_env(ROOT / f"recipes/accelerate_configs/zero{stage}.yaml")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    hf_ds = HfTrainerDeepSpeedConfig(plugin.deepspeed_config)
    hf_ds.trainer_config_process(training_args)
    resolved = hf_ds.config
    assert "auto" not in str({k: v for k, v in resolved.items() if k != "train_batch_size"})
    resolved["train_batch_size"] = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    ds = DeepSpeedConfig(resolved)  # world size 1 here
    assert ds.zero_optimization_stage == stage
    assert ds.gradient_accumulation_steps == training_args.gradient_accumulation_steps
    if stage == 3:
        assert resolved["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert os.environ["ACCELERATE_USE_DEEPSPEED"] == "true"
