"""`neuroscribe plan`: memory and time of a training run, on paper, before renting GPUs.

The model is built on the meta device from its config (for Llama-3.1-8B the public architecture
values shipped in neuroscribe/data; no weights), LoRA is applied with PEFT, and parameters are counted.

Accounting (per GPU, bf16 mixed precision, AdamW), as in the ZeRO paper:
- weights: 2 bytes per base parameter; LoRA adapters are fp32, 4 bytes each. Full-weight DPO keeps a
  frozen bf16 reference copy (another 2 bytes per parameter).
- gradients: 2 bytes per trainable parameter (4 for fp32 LoRA adapters).
- optimizer: 12 bytes per trainable parameter (fp32 master copy + two Adam moments; 8 for LoRA, whose
  fp32 weights are already counted). 16 bytes per trainable parameter in all.
- ZeRO-2 shards gradients and optimizer over the GPUs; ZeRO-3 / FSDP full-shard also the weights.
- activations (one micro-batch, bf16, SDPA/flash attention so no seq^2 term): per token and layer
  2 * (6h + 2kv + 4f) bytes; with activation checkpointing only each layer's input (2h bytes) is kept
  plus one layer being recomputed; plus one fp32 copy of the logits (4 * vocab bytes per token).
  DPO runs chosen and rejected: twice the tokens.
Not counted: CUDA context, allocator fragmentation, communication buffers, ZeRO-3's gathered layer;
`fits` keeps 10% of the card free for them.
Time: model FLOPs per token = 6N (full) or 4N + 6T (LoRA: no weight gradients for frozen N), plus
2N for DPO's reference forward, plus causal attention 6 * layers * h * seq; hours = FLOPs /
(gpus * peak * MFU).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from neuroscribe.configs import PlanConfig
from neuroscribe.train.args import parse_recipe, recipe_kind

SHIPPED_CONFIGS = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b-config.json",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b-config.json",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b-config.json",
}
HEADROOM = 0.10
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    name: str
    total_params: int  # base model
    trainable_params: int  # LoRA adapters, or total_params for full fine-tuning
    hidden_size: int
    num_layers: int
    intermediate_size: int
    kv_dim: int
    vocab_size: int
    peft: bool


@dataclass(frozen=True)
class RunShape:
    kind: str  # sft | dpo
    per_device_batch: int
    grad_accum: int
    max_length: int
    activation_checkpointing: bool
    reference_copy: bool = False  # full-weight DPO keeps a frozen model copy
    reference_forward: bool = False  # DPO computes reference log-probs every step

    @property
    def sequences_per_example(self) -> int:
        return 2 if self.kind == "dpo" else 1


@dataclass(frozen=True)
class Strategy:
    name: str
    shard_weights: bool = False
    shard_grads: bool = False
    shard_optimizer: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False


STRATEGIES = {
    "ddp": Strategy("ddp"),
    "zero2": Strategy("zero2", shard_grads=True, shard_optimizer=True),
    "zero3": Strategy("zero3", shard_weights=True, shard_grads=True, shard_optimizer=True),
}


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass(frozen=True)
class Plan:
    model: ModelShape
    run: RunShape
    strategy: Strategy
    gpus: int
    gpu_mem_gib: float
    memory: Memory
    alternatives: dict[str, Memory]
    sequences_per_step: int
    tokens_per_step_max: int
    examples: int
    tokens_per_example: int
    steps_per_epoch: int
    flops_per_token: float
    hours_per_epoch: float
    mfu: float
    peak_tflops: float
    sources: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.gpu_mem_gib * GIB * (1 - HEADROOM)


def memory_per_gpu(model: ModelShape, run: RunShape, strategy: Strategy, gpus: int) -> Memory:
    n, t = model.total_params, model.trainable_params
    weights = 2 * n * (2 if run.reference_copy else 1) + (4 * t if model.peft else 0)
    grads = (4 if model.peft else 2) * t
    optim = (8 if model.peft else 12) * t
    if strategy.shard_weights:
        weights /= gpus
    if strategy.shard_grads:
        grads /= gpus
    if strategy.shard_optimizer:
        optim /= gpus
    if strategy.offload_optimizer:
        optim = 0.0
    if strategy.offload_params:
        weights = 0.0
    h, f, kv, layers = model.hidden_size, model.intermediate_size, model.kv_dim, model.num_layers
    layer_bytes = 2 * (6 * h + 2 * kv + 4 * f)
    per_token = (2 * h * layers + layer_bytes) if run.activation_checkpointing else layer_bytes * layers
    per_token += 4 * model.vocab_size
    tokens = run.per_device_batch * run.max_length * run.sequences_per_example
    return Memory(float(weights), float(grads), float(optim), float(tokens * per_token))


def flops_per_token(model: ModelShape, run: RunShape, seq_len: int) -> float:
    n, t = model.total_params, model.trainable_params
    dense = (4 * n + 6 * t) if model.peft else 6 * n
    if run.reference_forward:
        dense += 2 * n
    attention = 6 * model.num_layers * model.hidden_size * seq_len
    return float(dense + attention)


def plan(
    model: ModelShape,
    run: RunShape,
    strategy: Strategy,
    gpus: int,
    gpu_mem_gib: float,
    examples: int,
    tokens_per_example: int | None = None,
    mfu: float = 0.4,
    peak_tflops: float = 989.0,
    sources: dict | None = None,
) -> Plan:
    """The pure core: every number of the printed plan from shapes and hardware."""
    if gpus < 1 or gpu_mem_gib <= 0 or not 0 < mfu <= 1 or examples < 1:
        raise ValueError("plan needs gpus >= 1, gpu memory > 0, 0 < mfu <= 1 and examples >= 1")
    seq = min(tokens_per_example or run.max_length, run.max_length)
    sequences = run.per_device_batch * run.grad_accum * gpus
    fpt = flops_per_token(model, run, seq)
    total_tokens = examples * seq * run.sequences_per_example
    hours = total_tokens * fpt / (gpus * peak_tflops * 1e12 * mfu) / 3600
    return Plan(
        model=model,
        run=run,
        strategy=strategy,
        gpus=gpus,
        gpu_mem_gib=gpu_mem_gib,
        memory=memory_per_gpu(model, run, strategy, gpus),
        alternatives={name: memory_per_gpu(model, run, s, gpus) for name, s in STRATEGIES.items()},
        sequences_per_step=sequences,
        tokens_per_step_max=sequences * run.max_length * run.sequences_per_example,
        examples=examples,
        tokens_per_example=seq,
        steps_per_epoch=math.ceil(examples / sequences),
        flops_per_token=fpt,
        hours_per_epoch=hours,
        mfu=mfu,
        peak_tflops=peak_tflops,
        sources=sources or {},
    )


# ------------------------------------------------------------------------------- from files


def model_config_file(spec: str, override: str | Path | None = None) -> Path:
    if override:
        return Path(override)
    if (Path(spec) / "config.json").exists():
        return Path(spec) / "config.json"
    if spec in SHIPPED_CONFIGS:
        from importlib.resources import files

        return Path(str(files("neuroscribe") / "data" / SHIPPED_CONFIGS[spec]))
    raise FileNotFoundError(f"model {spec}: no local config.json and no shipped config; pass --model-config FILE")


def model_shape(config_file: str | Path, lora: dict | None = None, name: str = "") -> ModelShape:
    """Build the model on the meta device (no memory, no weights) and count its parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = json.loads(Path(config_file).read_text())
    if "model_type" not in values:
        raise ValueError(f"{config_file}: field model_type is missing")
    cfg = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = total
    if lora:
        from peft import LoraConfig, get_peft_model

        trainable, _ = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora)).get_nb_trainable_parameters()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return ModelShape(
        name=name or str(config_file),
        total_params=total,
        trainable_params=trainable,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        intermediate_size=cfg.intermediate_size,
        kv_dim=getattr(cfg, "num_key_value_heads", heads) * head_dim,
        vocab_size=cfg.vocab_size,
        peft=bool(lora),
    )


def strategy_from_accelerate(path: str | Path) -> Strategy:
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))
    kind = str(cfg.distributed_type).split(".")[-1]
    if kind == "DEEPSPEED":
        ds = cfg.deepspeed_config or {}
        if "deepspeed_config_file" in ds:
            ds_file = json.loads(Path(ds["deepspeed_config_file"]).read_text())["zero_optimization"]
            stage, opt, par = (
                ds_file.get("stage", 0),
                ds_file.get("offload_optimizer", {}),
                ds_file.get("offload_param", {}),
            )
            opt_dev, par_dev = opt.get("device", "none"), par.get("device", "none")
        else:
            stage, opt_dev, par_dev = (
                ds.get("zero_stage", 0),
                ds.get("offload_optimizer_device", "none"),
                ds.get("offload_param_device", "none"),
            )
        base = STRATEGIES["zero3" if int(stage) == 3 else "zero2" if int(stage) == 2 else "ddp"]
        return Strategy(
            base.name,
            base.shard_weights,
            base.shard_grads,
            base.shard_optimizer,
            offload_optimizer=opt_dev not in (None, "none"),
            offload_params=par_dev not in (None, "none"),
        )
    if kind == "FSDP":
        fsdp = cfg.fsdp_config or {}
        if int(fsdp.get("fsdp_version", 1)) >= 2:  # FSDP2: resharding after forward = full shard
            full = str(fsdp.get("fsdp_reshard_after_forward", True)).lower() == "true"
        else:
            full = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")) in ("FULL_SHARD", "1")
        base = STRATEGIES["zero3" if full else "zero2"]
        offload = bool(fsdp.get("fsdp_offload_params", False))
        return Strategy(
            f"fsdp-{base.name}",
            base.shard_weights,
            base.shard_grads,
            base.shard_optimizer,
            offload_optimizer=offload,
            offload_params=offload,
        )
    return STRATEGIES["ddp"]


def plan_from_files(cfg: PlanConfig) -> Plan:
    """Read a training recipe and an accelerate config, then `plan`."""

    config, accelerate_config, model_config = cfg.config, cfg.accelerate_config, cfg.model_config

    kind = recipe_kind(config)
    _, targs, margs, _ = parse_recipe(config, kind)
    lora = None
    if margs.use_peft:
        lora = {"r": margs.lora_r, "lora_alpha": margs.lora_alpha, "target_modules": margs.lora_target_modules}
    cfg_file = model_config_file(margs.model_name_or_path, model_config)
    shape = model_shape(cfg_file, lora, name=margs.model_name_or_path)
    if not targs.max_length:
        raise ValueError(f"{config}: max_length is not set; the plan needs a sequence length")
    run = RunShape(
        kind=kind,
        per_device_batch=targs.per_device_train_batch_size,
        grad_accum=targs.gradient_accumulation_steps,
        max_length=targs.max_length,
        activation_checkpointing=bool(targs.activation_checkpointing),
        reference_copy=kind == "dpo" and not margs.use_peft and not targs.precompute_ref_log_probs,
        reference_forward=kind == "dpo" and not targs.precompute_ref_log_probs,
    )
    strategy = strategy_from_accelerate(accelerate_config)
    return plan(
        shape,
        run,
        strategy,
        cfg.gpus,
        cfg.gpu_mem,
        cfg.examples,
        cfg.tokens_per_example,
        cfg.mfu,
        cfg.peak_tflops,
        sources={"recipe": str(config), "accelerate_config": str(accelerate_config), "model_config": str(cfg_file)},
    )


# ---------------------------------------------------------------------------------- printing


def format_plan(p: Plan) -> str:
    m, r = p.model, p.run
    gib = lambda x: f"{x / GIB:9.2f}"  # noqa: E731
    lines = [
        f"plan: {r.kind.upper()} of {m.name} ({'LoRA' if m.peft else 'full fine-tuning'}); "
        f"model config {p.sources.get('model_config', '?')}",
        f"parameters: total {m.total_params:,} ({m.total_params / 1e9:.2f} B), trainable {m.trainable_params:,} "
        f"({100 * m.trainable_params / m.total_params:.2f}%)",
        f"strategy: {p.strategy.name} on {p.gpus} GPU(s) x {p.gpu_mem_gib:g} GiB"
        + (f" (from {p.sources['accelerate_config']})" if "accelerate_config" in p.sources else ""),
        f"per-GPU memory (GiB){'':4}  weights     grads  optimizer  activations     total  "
        f"fits (<= {100 * (1 - HEADROOM):.0f}%)",
    ]
    rows = [(p.strategy.name + " <- chosen", p.memory)] + [
        (n, mem) for n, mem in p.alternatives.items() if n != p.strategy.name
    ]
    budget = p.gpu_mem_gib * GIB * (1 - HEADROOM)
    for name, mem in rows:
        lines.append(
            f"  {name:22s}{gib(mem.weights)} {gib(mem.gradients)} {gib(mem.optimizer)}  {gib(mem.activations)}"
            f"  {gib(mem.total)}  {'yes' if mem.total <= budget else 'NO'}"
        )
    lines += [
        f"batch: {r.per_device_batch} seq/GPU x {r.grad_accum} accumulation x {p.gpus} GPU(s) = "
        f"{p.sequences_per_step} "
        f"{'pairs' if r.kind == 'dpo' else 'sequences'} per optimizer step; <= {p.tokens_per_step_max:,} tokens/step "
        f"at max_length {r.max_length}; activation checkpointing {'on' if r.activation_checkpointing else 'off'}",
        f"epoch: {p.examples:,} examples x {p.tokens_per_example:,} tokens"
        f"{' x 2 (chosen, rejected)' if r.kind == 'dpo' else ''}"
        f" = {p.steps_per_epoch:,} steps; {p.flops_per_token:.3g} FLOP/token; "
        f"~{p.hours_per_epoch:.2f} h per epoch at {100 * p.mfu:.0f}% MFU of {p.peak_tflops:g} TFLOP/s per GPU",
        f"verdict: {'fits' if p.fits else 'does NOT fit'} "
        f"({p.memory.total / GIB:.1f} of {p.gpu_mem_gib:g} GiB per GPU)",
    ]
    return "\n".join(lines)


def plan_command(cfg: PlanConfig, echo=print) -> Plan:
    """`neuroscribe plan`: build the plan from the files and print it."""
    p = plan_from_files(cfg)
    echo(format_plan(p))
    return p
