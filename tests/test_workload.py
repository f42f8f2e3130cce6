"""`neuroscribe plan-workload`: the loop's GPU-hours from token counts, checked by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from neuroscribe.configs import WorkloadConfig
from neuroscribe.train.plan import ModelShape
from neuroscribe.train.workload import prefill_flops_per_token, stage_costs, workload_command

# a toy shape: 1e9 parameters, 2 layers of hidden 10 and 5 MLP neurons each (10 neurons, 20 features)
TOY = ModelShape("toy", 10**9, 10**9, 10, 2, 5, 10, 100, False)


def test_every_stage_by_hand():
    cfg = WorkloadConfig(
        corpus_tokens=1000, context=8, k=3, prompt_tokens=100, explanation_tokens=10, sequences=2,
        sequence_tokens=5, header_tokens=1, eval_features=4, gpus=2, peak_tflops=1.0, mfu=0.5,
        decode_tokens_per_s=100.0,
    )  # fmt: skip
    per_s = 1e12 * 0.5
    flops = lambda ctx: 2e9 + 2 * 2 * 10 * ctx  # noqa: E731
    collect, explain, score, ev = stage_costs(TOY, cfg)
    assert collect.prefill_tokens == 1000 and collect.decode_tokens == 0
    assert math.isclose(collect.gpu_hours, 1000 * flops(8) / per_s / 3600)
    n = 2 * 5 * 2  # every neuron, two polarities
    assert explain.prefill_tokens == n * 100 and explain.decode_tokens == n * 3 * 10
    assert math.isclose(explain.gpu_hours, (n * 100 * flops(100) / per_s + n * 30 / 100.0) / 3600)
    assert score.prefill_tokens == n * 3 * 2 * (1 + 5) and score.decode_tokens == 0
    assert math.isclose(score.gpu_hours, n * 3 * 12 * flops(6) / per_s / 3600)
    assert ev.prefill_tokens == 4 * 100 + 4 * 12 and ev.decode_tokens == 4 * 10
    assert math.isclose(ev.gpu_hours, (400 * flops(100) / per_s + 48 * flops(6) / per_s + 40 / 100.0) / 3600)


def test_scaling_laws_of_the_plan():
    base = WorkloadConfig()
    hours = {c.stage: c.gpu_hours for c in stage_costs(TOY, base)}
    more_k = {c.stage: c.gpu_hours for c in stage_costs(TOY, WorkloadConfig(k=100))}
    score = next(s for s in hours if s.startswith("score"))
    assert math.isclose(more_k[next(s for s in more_k if s.startswith("score"))], 2 * hours[score])
    # GPUs change the wall time, never the GPU-hours
    assert [c.gpu_hours for c in stage_costs(TOY, WorkloadConfig(gpus=64))] == list(hours.values())
    assert stage_costs(TOY, WorkloadConfig(features=7))[1].prefill_tokens == 7 * base.prompt_tokens
    assert prefill_flops_per_token(TOY, 1024) > prefill_flops_per_token(TOY, 1)


def test_llama_8b_plan_counts_every_mlp_neuron_and_prints_the_transluce_line():
    lines: list[str] = []
    costs = workload_command(WorkloadConfig(gpus=2), echo=lines.append)
    text = "\n".join(lines)
    assert "917,504 features" in text  # 32 layers x 14,336 neurons x 2 polarities
    assert costs[1].prefill_tokens == 917_504 * 2000
    assert "64 h on 2 x A100" in text and "total" in text
    assert max(costs, key=lambda c: c.gpu_hours).stage.startswith("score")  # k = 50 simulations dominate


def test_bad_workload_values_are_one_clear_error():
    with pytest.raises(ValueError, match="--k must be >= 1"):
        WorkloadConfig(k=0)
    with pytest.raises(ValueError, match="--features must be >= 1"):  # 0 would silently mean every neuron
        WorkloadConfig(features=0)
    res = subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", "plan-workload", "--mfu", "2"], capture_output=True, text=True
    )
    assert res.returncode == 2 and "--mfu" in res.stderr + res.stdout
