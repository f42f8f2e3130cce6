"""The local all-at-once simulator on real models (a tiny random Llama and the bundled SmolLM2)."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from neuroscribe import scoring
from neuroscribe.prompts import detection_messages
from neuroscribe.records import Exemplar, Explanation, FeatureExemplars, FeatureId
from neuroscribe.scorers import (
    JUDGE_ACTIVE_FRACTION,
    detection_items,
    detection_score,
    fuzzing_items,
    fuzzing_score,
    judge_scores,
    simulate_and_score,
    target_values,
)
from neuroscribe.simulators.allatonce import LocalSimulator, digit_token_ids, single_token_ids

FEATURE = FeatureId("mlp", 2, 11)
AWKWARD = ["the", " cat", "\n", " sat", "\t", " on", "<|im_start|>", " mat", "  ", "a b", "\u2028", "("]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from neuroscribe.models import load_model

    return load_model(str(tiny_llama))


def random_exemplars(n, split="score", source="top", seed=0, lengths=(3, 12), start_id=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        toks = tuple(rng.choice(AWKWARD) for _ in range(rng.randint(*lengths)))
        acts = tuple(rng.choice([0.0, 0.0, rng.uniform(-1, 3)]) for _ in toks)
        out.append(Exemplar(toks, acts, start_id + i, source=source, split=split, rank=i))
    return out


def make_record() -> FeatureExemplars:
    exs = []
    for k, split in enumerate(("explain", "score", "test")):
        for j, source in enumerate(("top", "quantile", "random", "hard_negative")):
            exs += random_exemplars(2, split, source, seed=10 * k + j, start_id=1000 * k + 100 * j)
    return FeatureExemplars(FEATURE, tuple(exs))


def explanation(text="cats sitting on mats", ok=True) -> Explanation:
    return Explanation(FEATURE.key, text if ok else "", "test", ok=ok, raw=text)


def max_diff(a, b) -> float:
    assert [x.window_id for x in a] == [y.window_id for y in b]
    return max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x.predicted, y.predicted, strict=True))


def test_shared_prefix_path_matches_full_prompts_on_tiny_llama(tiny):
    model, tok = tiny
    exemplars = random_exemplars(5)  # different lengths: padded batches of 2
    fast = LocalSimulator(model, tok, batch_size=2).simulate("cats", exemplars)
    full = LocalSimulator(model, tok, mode="full").simulate("cats", exemplars)
    assert max_diff(fast, full) < 1e-4
    for sim, e in zip(fast, exemplars):
        assert len(sim.predicted) == len(e.tokens) and sim.true_activations == e.activations
        assert all(0.0 <= v <= 9.0 for v in sim.predicted)
    # The explanation matters: another one gives other predictions.
    other = LocalSimulator(model, tok, batch_size=2).simulate("dogs and the weather today", exemplars)
    assert max_diff(fast, other) > 1e-6


def test_shared_prefix_path_matches_full_prompts_on_smollm2(smollm2):
    model, tok = smollm2
    exemplars = random_exemplars(3, lengths=(8, 16))
    fast = LocalSimulator(model, tok, batch_size=2).simulate("the word 'cat'", exemplars)
    full = LocalSimulator(model, tok, mode="full").simulate("the word 'cat'", exemplars)
    assert max_diff(fast, full) < 1e-4
    # Yes/No judgements go through SmolLM2's own chat template.
    probs = LocalSimulator(model, tok).yes_probabilities(
        [detection_messages("the word 'cat'", ["The", " cat", " sat"]), detection_messages("x", ["1"])]
    )
    assert all(0.0 < p < 1.0 for p in probs) and probs[0] != probs[1]


def test_every_slot_is_read_just_before_its_unknown(tiny):
    model, tok = tiny
    sim = LocalSimulator(model, tok)
    from neuroscribe.prompts import simulator_prompt

    prompt = simulator_prompt("x", AWKWARD)
    ids, readers = sim._encode_body(prompt)
    assert len(readers) == len(AWKWARD)
    for r in readers:
        assert tok.decode(ids[r]) == "\t"  # the tab that ends the token's display
        assert "unknown".startswith(tok.decode(ids[r + 1]))


def test_digit_ids_are_single_distinct_tokens(tiny, smollm2):
    for _, tok in (tiny, smollm2):
        ids = digit_token_ids(tok)
        assert len(set(ids)) == 10 and [tok.decode([i]) for i in ids] == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="not a single token"):
        single_token_ids(tiny[1], ["unknown"])  # the tiny BPE splits it


def test_simulator_refuses_explain_split_exemplars(tiny):
    with pytest.raises(ValueError, match="held-out"):
        LocalSimulator(*tiny).simulate("cats", random_exemplars(1, split="explain"))
    with pytest.raises(ValueError, match="simulator mode"):
        LocalSimulator(*tiny, mode="fastest")


class RecordingSimulator(LocalSimulator):
    """The real local simulator, remembering which exemplars it was shown."""

    seen: list[Exemplar]

    def simulate_many(self, explanations, exemplars):
        self.seen = list(getattr(self, "seen", [])) + list(exemplars)
        return super().simulate_many(explanations, exemplars)


def test_simulate_and_score_uses_only_held_out_exemplars(tiny):
    record = make_record()
    sim = RecordingSimulator(*tiny, spec="hf:tiny")
    scored = simulate_and_score(sim, explanation(), record, split="score")
    seen = {e.window_id for e in sim.seen}
    score_ids = {e.window_id for e in record.select(split="score", sources=["top", "quantile", "random"])}
    assert seen == score_ids
    assert not seen & {e.window_id for e in record.exemplars if e.split != "score"}
    assert scored.n_exemplars == len(scored.simulations) == 6 and scored.simulator == "hf:tiny"
    assert [s.source for s in scored.simulations] == ["top", "top", "quantile", "quantile", "random", "random"]
    # The headline numbers are exactly the pure scoring functions over the simulations, against
    # relu(activation) by default and the signed activation with target="raw".
    assert any(a < 0 for s in scored.simulations for a in s.true_activations), "the fixture has negative values"
    for target, result in (("relu", scored), ("raw", simulate_and_score(sim, explanation(), record, "score", "raw"))):
        truth = [target_values(s.true_activations, target) for s in result.simulations]
        pred = [s.predicted for s in result.simulations]
        expect = scoring.top_and_random_score(truth[:4], pred[:4], truth[4:], pred[4:])
        assert result.score == pytest.approx(expect) and result.target == target and result.status == "ok"
        assert result.random_only_score == pytest.approx(scoring.random_only_score(truth[4:], pred[4:]), nan_ok=True)
    assert scored.score != pytest.approx(simulate_and_score(sim, explanation(), record, "score", "raw").score)
    assert (scored.n_top, scored.n_random, scored.n_top_held, scored.n_random_held) == (2, 2, 4, 2)
    assert -1.0 <= scored.score <= 1.0


def test_simulate_and_score_guards(tiny):
    record = make_record()
    sim = LocalSimulator(*tiny)
    with pytest.raises(ValueError, match="held-out split"):
        simulate_and_score(sim, explanation(), record, split="explain")
    with pytest.raises(ValueError, match="exemplars are for"):
        simulate_and_score(sim, Explanation("mlp/L0/1+", "x", "test"), record, "score")
    failed = simulate_and_score(sim, explanation(ok=False), record, "score")
    assert math.isnan(failed.score) and failed.simulations == () and failed.status == "unparsed"
    no_random = FeatureExemplars(record.feature, tuple(e for e in record.exemplars if e.source != "random"))
    lacking = simulate_and_score(sim, explanation(), no_random, "score")
    assert lacking.status == "insufficient" and "no random exemplar" in lacking.reason and math.isnan(lacking.score)
    assert lacking.simulations == (), "an insufficient split is never simulated, let alone scored one-sided"


def test_judges_label_by_activation_not_by_source():
    record = make_record()
    fmax = record.reference_max
    items = detection_items(record, "score")
    assert len({e.window_id for e, _ in items}) == len(items)  # each window once
    for e, activating in items:
        assert activating == (max(e.activations) > 0)  # delphi: any activation > 0, whatever source mined it
    for e, activating in detection_items(record, "score", active_fraction=0.1):
        assert activating == (max(e.activations) > 0.1 * fmax)
    assert any(e.source == "random" and y for e, y in items) or any(e.source == "top" and not y for e, y in items)


def test_detection_calls_any_positive_activation_active_by_default_and_records_the_threshold():
    weak = Exemplar(("a", "b", "c"), (0.0, 0.05, 0.0), 1, source="random", split="score")
    strong = Exemplar(("a", "b", "c"), (0.0, 1.0, 0.0), 2, source="top", split="score")
    quiet = Exemplar(("a", "b", "c"), (0.0, 0.0, -0.3), 3, source="random", split="score")
    record = FeatureExemplars(FEATURE, (weak, strong, quiet))
    assert [y for _, y in detection_items(record, "score")] == [True, True, False]
    assert [y for _, y in detection_items(record, "score", active_fraction=0.1)] == [False, True, False]

    class Half:
        def yes_probabilities(self, messages):
            return [0.5] * len(messages)

    judged = judge_scores(Half(), explanation(), record, "score")
    assert judged["active_fraction"] == JUDGE_ACTIVE_FRACTION == 0.0


class _RunCounter:
    """A judge that never reads the explanation: yes when the marks form exactly one run."""

    def yes_probabilities(self, messages):
        excerpt = [m[-1]["content"].split("<<like this>>: ")[1] for m in messages]
        return [1.0 if text.count("<<") == 1 else 0.0 for text in excerpt]


def _run_record(n: int = 40) -> FeatureExemplars:
    rng = random.Random(0)
    exs = []
    for i in range(n):
        acts = [0.0] * 12
        if i % 2 == 0:  # activating: one run of 3 tokens somewhere
            s = rng.randrange(10)
            acts[s : s + 3] = [1.0, 2.0, 1.0]
        exs.append(Exemplar(tuple(f" w{j}" for j in range(12)), tuple(acts), i, source="top", split="score", rank=i))
    return FeatureExemplars(FEATURE, tuple(exs))


def test_a_judge_that_reads_only_the_mark_structure_scores_chance_on_default_fuzzing():
    record = _run_record()
    fooled = fuzzing_score(_RunCounter(), explanation(), record, "score", variant="scattered")
    assert fooled["fuzzing_scattered"] > 0.85  # scattered decoys give themselves away
    fair = fuzzing_score(_RunCounter(), explanation(), record, "score")
    assert fair["fuzzing"] == pytest.approx(0.5) and fair["fuzzing_auroc"] == pytest.approx(0.5)


def test_fuzzing_variants():
    record = make_record()
    fmax = record.reference_max
    default = fuzzing_items(record, "score", seed=3)
    assert default and default == fuzzing_items(record, "score", seed=3)
    positives = [(e, m) for e, m, t in default if t]
    assert all(m[i] == (e.activations[i] > 0) for e, m in positives for i in range(len(m)))

    def runs(m):
        return sorted(len(r) for r in "".join("1" if x else "0" for x in m).split("0") if r)

    shapes = [runs(m) for _, m in positives]
    for e, marks, truth in default:
        if not truth:  # a non-activating exemplar carrying a real activating exemplar's runs
            assert max(e.activations) <= 0 and runs(marks) in shapes
    scattered = fuzzing_items(record, "score", seed=3, variant="scattered", active_fraction=0.1)
    marked = [(e, m) for e, m, t in scattered if t]
    mean = round(sum(sum(m) for _, m in marked) / len(marked))
    for e, marks, truth in scattered:
        if not truth:  # as many random tokens marked as positives mark on average
            assert max(e.activations) <= 0.1 * fmax and sum(marks) == mean
    active = fuzzing_items(record, "score", seed=3, variant="active")
    decoys = [(e, m) for e, m, t in active if not t]
    truths = {e.window_id: m for e, m, t in active if t}
    assert decoys
    for e, decoy in decoys:
        real = truths[e.window_id]
        assert sum(decoy) == sum(real) and not any(a and b for a, b in zip(real, decoy))
        assert runs(decoy) == runs(real), "decoys keep the shape of the true runs"


def test_detection_and_fuzzing_return_balanced_accuracies(tiny):
    record = make_record()
    sim = LocalSimulator(*tiny, batch_size=4)
    probs = sim.yes_probabilities([[{"role": "user", "content": "Is this a test?"}]] * 2)
    assert len(probs) == 2 and all(0.0 < p < 1.0 for p in probs) and probs[0] == pytest.approx(probs[1])
    scores = {
        **detection_score(sim, explanation(), record, "score"),
        **fuzzing_score(sim, explanation(), record, "score"),
        **fuzzing_score(sim, explanation(), record, "score", variant="active"),
    }
    assert set(scores) == {
        "detection",
        "detection_auroc",
        "fuzzing",
        "fuzzing_auroc",
        "fuzzing_active",
        "fuzzing_active_auroc",
    }
    assert all(0.0 <= v <= 1.0 for v in scores.values() if not math.isnan(v))
    with pytest.raises(ValueError, match="held-out split"):
        detection_score(sim, explanation(), record, split="explain")


class LossySimulator(LocalSimulator):
    """The real local simulator with every third token made unreadable (NaN), the way an HTTP
    backend reports slots whose top-k logprobs held no digit (no such server runs in this test)."""

    def simulate(self, explanation, exemplars):
        sims = super().simulate(explanation, exemplars)

        def lossy(values):
            return tuple(math.nan if i % 3 == 0 else v for i, v in enumerate(values))

        return [dataclasses.replace(s, predicted=lossy(s.predicted)) for s in sims]


def test_unreadable_predictions_are_dropped_and_counted_not_zeroed(tiny):
    record = make_record()
    scored = simulate_and_score(LossySimulator(*tiny), explanation(), record, "score")
    n_nan = sum(math.isnan(v) for s in scored.simulations for v in s.predicted)
    assert n_nan > 0 and scored.n_parse_failures == n_nan
    keep = [
        [(t, p) for t, p in zip(target_values(s.true_activations, "relu"), s.predicted) if not math.isnan(p)]
        for s in scored.simulations
    ]
    top, rnd = [k for k in keep[:4] if k], [k for k in keep[4:] if k]
    expect = scoring.top_and_random_score(
        [[t for t, _ in k] for k in top],
        [[p for _, p in k] for k in top],
        [[t for t, _ in k] for k in rnd],
        [[p for _, p in k] for k in rnd],
    )
    assert scored.score == pytest.approx(expect, nan_ok=True)
