"""`neuroscribe plan-workload`: GPU-hours of the whole loop for every MLP neuron of a subject, on paper.

`neuroscribe plan` sizes one training run; this sizes the inference around it — the part that
dominates when every feature of an 8B model is explained (Transluce: 458,752 neurons x 2 polarities,
k = 50). Four stages, each a count of tokens turned into time by one of two stated throughputs:

- collect: the subject reads the corpus once (all layers, forward only): prefill tokens = corpus tokens;
- explain: per feature, one explainer prompt (exemplars + instructions) read once and `k` explanations
  sampled from it (vLLM's n-sampling shares the prompt): prefill = features x prompt tokens,
  decode = features x k x explanation tokens;
- score: every candidate simulated on the held-out sequences (fine-tuned simulator format: a header
  with the explanation, then the sequence; one forward each, no decoding): prefill = features x k x
  sequences x (header + sequence tokens);
- eval: the student explains `eval_features` held-out features best-of-1 and each explanation is
  scored as above.

Prefill (reading) time = tokens x FLOPs per token / (GPUs x peak x MFU), FLOPs per token = 2 x the
model's parameters + causal attention 2 x layers x hidden x context (forward only). Decode time =
tokens / (GPUs x `decode_tokens_per_s`), a measured-or-assumed batched decode throughput per GPU
(decode is memory-bound, FLOPs do not predict it). Every GPU is assumed busy (data parallel over
features); the stages' models are the subject for collect and `model` for the rest (an 8B student
and simulator, as Transluce's). Not counted: engine start-up, the teacher's API calls, training.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuroscribe.configs import WorkloadConfig
from neuroscribe.train.plan import ModelShape, model_config_file, model_shape

TRANSLUCE_HOURS, TRANSLUCE_GPUS = 64, 2  # reported for collecting their exemplars on 2 x A100


@dataclass(frozen=True)
class StageCost:
    stage: str
    prefill_tokens: float
    decode_tokens: float
    gpu_hours: float


def prefill_flops_per_token(shape: ModelShape, context: int) -> float:
    """Forward FLOPs per token read: 2 per parameter plus causal attention over half the context."""
    return 2.0 * shape.total_params + 2.0 * shape.num_layers * shape.hidden_size * context


def feature_count(shape: ModelShape, cfg: WorkloadConfig) -> int:
    """`cfg.features`, else every MLP neuron x polarities."""
    return cfg.features or shape.num_layers * shape.intermediate_size * cfg.polarities


def read_flops_per_s(cfg: WorkloadConfig) -> float:
    """FLOP/s one GPU spends reading: its peak x MFU."""
    return cfg.peak_tflops * 1e12 * cfg.mfu


def stage_costs(shape: ModelShape, cfg: WorkloadConfig) -> list[StageCost]:
    """The pure core: every stage's tokens and GPU-hours (module doc)."""
    n, reads_per_s = feature_count(shape, cfg), read_flops_per_s(cfg)

    def cost(stage: str, reads: list[tuple[float, int]], decode: float) -> StageCost:
        """`reads`: (tokens, their context) pairs; `decode`: tokens generated."""
        flops = sum(tokens * prefill_flops_per_token(shape, context) for tokens, context in reads)
        seconds = flops / reads_per_s + decode / cfg.decode_tokens_per_s
        return StageCost(stage, sum(t for t, _ in reads), decode, seconds / 3600)

    scored = (cfg.sequences * (cfg.header_tokens + cfg.sequence_tokens), cfg.header_tokens + cfg.sequence_tokens)
    return [
        cost("collect", [(cfg.corpus_tokens, cfg.context)], 0),
        cost(
            f"explain (k = {cfg.k})", [(n * cfg.prompt_tokens, cfg.prompt_tokens)], n * cfg.k * cfg.explanation_tokens
        ),
        cost(f"score ({cfg.sequences} x {cfg.sequence_tokens} tokens)", [(n * cfg.k * scored[0], scored[1])], 0),
        cost(
            "eval (student best-of-1, scored)",
            [(cfg.eval_features * cfg.prompt_tokens, cfg.prompt_tokens), (cfg.eval_features * scored[0], scored[1])],
            cfg.eval_features * cfg.explanation_tokens,
        ),
    ]


def format_workload(shape: ModelShape, cfg: WorkloadConfig, costs: list[StageCost]) -> str:
    n = feature_count(shape, cfg)
    lines = [
        f"workload: {n:,} features of {shape.name} ({shape.total_params / 1e9:.2f} B parameters), k = {cfg.k}, "
        f"on {cfg.gpus} GPU(s) at {cfg.peak_tflops:g} TFLOP/s x {100 * cfg.mfu:.0f}% MFU reading, "
        f"{cfg.decode_tokens_per_s:g} decode tok/s per GPU",
        f"{'stage':36s} {'read tokens':>14s} {'decoded':>14s} {'GPU-hours':>11s} {'wall h':>9s}",
    ]
    for c in costs:
        lines.append(
            f"{c.stage:36s} {c.prefill_tokens:14.3g} {c.decode_tokens:14.3g} {c.gpu_hours:11.1f} "
            f"{c.gpu_hours / cfg.gpus:9.1f}"
        )
    total = sum(c.gpu_hours for c in costs)
    per_token = prefill_flops_per_token(shape, cfg.context) / read_flops_per_s(cfg)
    transluce_tokens = TRANSLUCE_HOURS * 3600 * TRANSLUCE_GPUS / per_token
    lines += [
        f"{'total':36s} {'':14s} {'':14s} {total:11.1f} {total / cfg.gpus:9.1f}",
        f"beside Transluce: {TRANSLUCE_HOURS} h on {TRANSLUCE_GPUS} x A100 for their exemplars (collect); at this "
        f"throughput that is {transluce_tokens:.3g} corpus tokens read (collect above: {cfg.corpus_tokens:.3g})",
    ]
    return "\n".join(lines)


def workload_command(cfg: WorkloadConfig, echo=print) -> list[StageCost]:
    """`neuroscribe plan-workload`: read the model's shape (meta device, no weights), cost, print."""
    shape = model_shape(model_config_file(cfg.model, cfg.model_config), name=cfg.model)
    costs = stage_costs(shape, cfg)
    echo(format_workload(shape, cfg, costs))
    return costs
