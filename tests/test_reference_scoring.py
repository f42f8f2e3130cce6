"""Our scoring agrees with OpenAI's reference package on identical inputs.

`automated-interpretability==0.0.24` (module neuron_explainer) pins numpy<2, so it lives in its own
venv built by scripts/reference_venv.sh (~25 s the first time, ~2 s when already built). Its
`simulate_and_score` is fed our predictions through a simulator that replays them: no model runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from neuroscribe import scoring

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the first run builds the reference venv (~25-45 s)

REFERENCE_SNIPPET = r"""
import asyncio, json, sys
from neuron_explainer.activations.activations import ActivationRecord
from neuron_explainer.explanations.explanations import ActivationScale, SequenceSimulation
from neuron_explainer.explanations.scoring import correlation_score, simulate_and_score
from neuron_explainer.explanations.simulator import NeuronSimulator, compute_predicted_activation_stats_for_token

class ReplayingSimulator(NeuronSimulator):
    def __init__(self, predictions):
        self.predictions = predictions  # tokens tuple -> predicted values
    async def simulate(self, tokens):
        pred = self.predictions[tuple(tokens)]
        return SequenceSimulation(tokens=list(tokens), expected_activations=pred,
                                  activation_scale=ActivationScale.SIMULATED_NORMALIZED_ACTIVATIONS,
                                  distribution_values=[[] for _ in pred], distribution_probabilities=[[] for _ in pred])

def nan_to_none(x):
    return None if x is None or x != x else float(x)

request = json.load(sys.stdin)
out = {"pooled": [], "per_record": [], "expected": []}
for case in request["cases"]:
    records = [ActivationRecord(tokens=r["tokens"], activations=r["true"]) for r in case]
    sim = ReplayingSimulator({tuple(r["tokens"]): r["pred"] for r in case})
    scored = asyncio.run(simulate_and_score(sim, records))
    out["pooled"].append(nan_to_none(scored.ev_correlation_score))
    out["per_record"].append([nan_to_none(correlation_score(r["true"], r["pred"])) for r in case])
for logprobs in request["logprobs"]:
    out["expected"].append(float(compute_predicted_activation_stats_for_token(logprobs)[1]))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference_python() -> str:
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", getattr(sys, "_base_executable", sys.executable)))
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "reference_venv.sh")], capture_output=True, text=True, env=env, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/reference_venv.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return str(Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python")


def run_reference(python: str, request: dict) -> dict:
    proc = subprocess.run(
        [python, "-c", REFERENCE_SNIPPET], input=json.dumps(request), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def random_case(rng: random.Random, case_id: int) -> list[dict]:
    """Several records of different lengths; true values raw with negatives, predictions on 0..9."""
    records = []
    for r in range(rng.randint(2, 6)):
        n = rng.randint(1, 40)
        true = [rng.gauss(0.0, 2.0) if rng.random() < 0.6 else 0.0 for _ in range(n)]
        pred = [rng.uniform(0.0, 9.0) for _ in range(n)]
        records.append({"tokens": [f"c{case_id}r{r}t{i}" for i in range(n)], "true": true, "pred": pred})
    return records


def same(ours: float, ref: float | None) -> bool:
    if ref is None:
        return math.isnan(ours)
    return abs(ours - ref) <= 1e-9


def test_correlations_match_neuron_explainer(reference_python):
    rng = random.Random(1234)
    cases = [random_case(rng, i) for i in range(8)]
    # Undefined scores must agree too: a constant prediction, and a constant true side.
    cases.append([{"tokens": ["a", "b", "c"], "true": [1.0, -2.0, 3.0], "pred": [4.0, 4.0, 4.0]}])
    cases.append(
        [
            {"tokens": ["d", "e"], "true": [0.0, 0.0], "pred": [1.0, 2.0]},
            {"tokens": ["f", "g"], "true": [0.0, 0.0], "pred": [3.0, 0.5]},
        ]
    )
    logprobs = [{"0": -0.1, "3": -2.5, "9": -4.0}, {"1": -1.2, "2": -0.7, "hello": -0.2}, {"7": -0.01}]
    ref = run_reference(reference_python, {"cases": cases, "logprobs": logprobs})

    for case, ref_pooled, ref_each in zip(cases, ref["pooled"], ref["per_record"]):
        ours = scoring.pooled_correlation([r["true"] for r in case], [r["pred"] for r in case])
        assert same(ours, ref_pooled), (ours, ref_pooled)
        for r, ref_r in zip(case, ref_each):
            assert same(scoring.pearson(r["true"], r["pred"]), ref_r)
    assert sum(p is not None for p in ref["pooled"]) == 8  # the random cases are defined, the last two not

    for lp, ref_ev in zip(logprobs, ref["expected"]):
        digits = {k: v for k, v in lp.items() if k.isdigit()}
        assert abs(scoring.expected_value(digits, log=True) - ref_ev) <= 1e-9


def test_balanced_top_and_random_equals_reference_pool(reference_python):
    """With equal counts, top-and-random is OpenAI's pooled score over the union of both sides."""
    rng = random.Random(99)
    top, rnd = random_case(rng, 100)[:2], random_case(rng, 200)[:2]  # 2 records per side
    ref = run_reference(reference_python, {"cases": [top + rnd], "logprobs": []})
    ours = scoring.top_and_random_score(
        [r["true"] for r in top], [r["pred"] for r in top], [r["true"] for r in rnd], [r["pred"] for r in rnd]
    )
    assert same(ours, ref["pooled"][0])
