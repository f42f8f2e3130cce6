"""`neuroscribe plan`: parameter counts from the meta-device model and the memory/time arithmetic,
checked against numbers computed by hand from Llama-3.1-8B's public architecture."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from neuroscribe.train.plan import (
    GIB,
    STRATEGIES,
    ModelShape,
    PlanConfig,
    RunShape,
    Strategy,
    format_plan,
    memory_per_gpu,
    model_config_file,
    model_shape,
    plan,
    plan_command,
    strategy_from_accelerate,
)

ROOT = Path(__file__).resolve().parents[1]
H, F, KV, L, V = 4096, 14336, 8 * 128, 32, 128256
PER_LAYER = H * H + H * KV + H * KV + H * H + 3 * H * F + 2 * H  # q, k, v, o, gate/up/down, two norms
N_8B = 2 * V * H + L * PER_LAYER + H  # untied embeddings and head, final norm
LORA_PER_R = L * (2 * (H + H) + 2 * (H + KV) + 2 * (H + F) + (F + H))  # r * (in + out) per linear


def shape(peft: bool = False, r: int = 64) -> ModelShape:
    return ModelShape("llama-3.1-8b", N_8B, r * LORA_PER_R if peft else N_8B, H, L, F, KV, V, peft)


def test_hand_count_is_the_published_size():
    assert N_8B == 8_030_261_248


def test_meta_device_model_matches_the_hand_count():
    cfg = model_config_file("meta-llama/Llama-3.1-8B-Instruct")
    full = model_shape(cfg)
    assert (full.total_params, full.trainable_params) == (N_8B, N_8B)
    assert (full.hidden_size, full.num_layers, full.intermediate_size, full.kv_dim, full.vocab_size) == (H, L, F, KV, V)
    lora = model_shape(cfg, {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"})
    assert lora.trainable_params == 16 * LORA_PER_R == 41_943_040 and lora.total_params == N_8B


def test_memory_per_gpu_zero3_full_on_8_gpus():
    run = RunShape("sft", per_device_batch=2, grad_accum=4, max_length=8192, activation_checkpointing=True)
    mem = memory_per_gpu(shape(), run, STRATEGIES["zero3"], gpus=8)
    assert mem.weights == 2 * N_8B / 8 and mem.gradients == 2 * N_8B / 8 and mem.optimizer == 12 * N_8B / 8
    per_token = 2 * H * L + 2 * (6 * H + 2 * KV + 4 * F) + 4 * V
    assert mem.activations == 2 * 8192 * per_token
    assert mem.total / GIB == pytest.approx(29.35, abs=0.01)
    no_ckpt = memory_per_gpu(shape(), RunShape("sft", 2, 4, 8192, False), STRATEGIES["zero3"], 8)
    assert no_ckpt.activations == 2 * 8192 * (L * 2 * (6 * H + 2 * KV + 4 * F) + 4 * V)


def test_strategies_shard_what_they_should():
    run = RunShape("sft", 1, 1, 1024, True)
    ddp, z2, z3 = (memory_per_gpu(shape(), run, STRATEGIES[s], 8) for s in ("ddp", "zero2", "zero3"))
    assert ddp.weights + ddp.gradients + ddp.optimizer == 16 * N_8B
    assert z2.weights == ddp.weights and z2.gradients == ddp.gradients / 8 and z2.optimizer == ddp.optimizer / 8
    assert z3.weights == ddp.weights / 8 and ddp.activations == z2.activations == z3.activations
    off = memory_per_gpu(shape(), run, Strategy("zero3", True, True, True, offload_optimizer=True), 8)
    assert off.optimizer == 0


def test_lora_on_one_gpu_and_dpo_reference_copy():
    r64 = 64 * LORA_PER_R
    run = RunShape("sft", 4, 4, 8192, True)
    mem = memory_per_gpu(shape(peft=True), run, STRATEGIES["ddp"], 1)
    assert mem.weights == 2 * N_8B + 4 * r64 and mem.gradients == 4 * r64 and mem.optimizer == 8 * r64
    dpo = RunShape("dpo", 1, 8, 8192, True, reference_copy=True, reference_forward=True)
    full_dpo = memory_per_gpu(shape(), dpo, STRATEGIES["zero3"], 8)
    assert full_dpo.weights == 2 * 2 * N_8B / 8  # policy + frozen reference, sharded
    assert (
        full_dpo.activations
        == 2 * memory_per_gpu(shape(), RunShape("sft", 1, 8, 8192, True), STRATEGIES["zero3"], 8).activations
    )


def test_tokens_per_step_and_hours_per_epoch():
    run = RunShape("sft", per_device_batch=2, grad_accum=4, max_length=8192, activation_checkpointing=True)
    p = plan(
        shape(),
        run,
        STRATEGIES["zero3"],
        gpus=8,
        gpu_mem_gib=80,
        examples=10_000,
        tokens_per_example=3000,
        mfu=0.4,
        peak_tflops=989.0,
    )
    assert p.sequences_per_step == 64 and p.tokens_per_step_max == 64 * 8192
    assert p.steps_per_epoch == math.ceil(10_000 / 64) == 157
    flops = 6 * N_8B + 6 * L * H * 3000
    assert p.flops_per_token == flops
    assert p.hours_per_epoch == pytest.approx(10_000 * 3000 * flops / (8 * 989e12 * 0.4) / 3600)
    assert p.fits
    lora = plan(shape(peft=True), run, STRATEGIES["ddp"], 1, 80, 10_000, 3000)
    assert lora.flops_per_token == 4 * N_8B + 6 * 64 * LORA_PER_R + 6 * L * H * 3000


def test_accelerate_configs_map_to_strategies():
    cfgs = ROOT / "recipes" / "accelerate_configs"
    assert strategy_from_accelerate(cfgs / "ddp.yaml").name == "ddp"
    assert strategy_from_accelerate(cfgs / "zero2.yaml") == STRATEGIES["zero2"]
    assert strategy_from_accelerate(cfgs / "zero3.yaml") == STRATEGIES["zero3"]
    fsdp = strategy_from_accelerate(cfgs / "fsdp.yaml")
    assert fsdp.name == "fsdp-zero3" and fsdp.shard_weights and not fsdp.offload_params


def test_plan_command_prints_the_two_8b_plans():
    lines: list[str] = []
    recipes, acc = ROOT / "recipes" / "llama-3.1-8b-explainer", ROOT / "recipes" / "accelerate_configs"
    full = plan_command(PlanConfig(str(recipes / "sft/config_full.yaml"), str(acc / "zero3.yaml")), echo=lines.append)
    lora = plan_command(PlanConfig(str(recipes / "sft/config_lora.yaml"), str(acc / "ddp.yaml"), gpus=1), lines.append)
    assert full.fits and lora.fits and full.model.total_params == N_8B
    assert lora.model.trainable_params == 64 * LORA_PER_R  # the recipe's r=64, all-linear
    text = "\n".join(lines)
    for needle in ("8,030,261,248", "zero3 <- chosen", "ddp <- chosen", "verdict: fits", "% MFU", "tokens/step"):
        assert needle in text
    too_big = plan_command(
        PlanConfig(str(recipes / "sft/config_full.yaml"), str(acc / "ddp.yaml"), gpus=1), lines.append
    )
    assert not too_big.fits and "does NOT fit" in lines[-1]


def test_unknown_model_asks_for_a_config():
    with pytest.raises(FileNotFoundError, match="--model-config"):
        model_config_file("someone/unknown-model")
    assert "verdict" in format_plan(plan(shape(), RunShape("sft", 1, 1, 512, True), STRATEGIES["ddp"], 1, 80, 10))
