"""OpenAI neuron-explainer JSON: a hand-written file in the exact shape `neuron_explainer` writes
(orjson output of its dataclasses: `dataclass_name` keys, NaN as null, optional dfa fields), and
round trips through every export layout."""

from __future__ import annotations

import json
import math
import random

import pytest

from neuroscribe.interchange import (
    InterchangeError,
    export_neuron_records,
    import_explanations,
    import_neuron_records,
    import_scored_explanations,
)
from neuroscribe.records import Exemplar, FeatureExemplars, FeatureId, FeatureStats


def activation_record(tokens, acts, tagged=True):
    rec = {"tokens": tokens, "activations": acts, "dfa_values": None, "dfa_target_index": None}
    return {**rec, "dataclass_name": "ActivationRecord"} if tagged else {"tokens": tokens, "activations": acts}


def openai_record(tagged=True, layer=3, neuron=7):
    rng = random.Random(layer * 1000 + neuron)

    def rec(n=4, scale=1.0):
        return activation_record(
            [f" w{rng.randrange(99)}" for _ in range(n)], [round(rng.uniform(-0.2, scale), 4) for _ in range(n)], tagged
        )

    top = [rec(scale=5.0) for _ in range(8)]
    rnd = [rec(scale=0.3) for _ in range(6)]
    doc = {
        "neuron_id": {"layer_index": layer, "neuron_index": neuron, "dataclass_name": "NeuronId"},
        "random_sample": rnd,
        "random_sample_by_quantile": [[rec() for _ in range(3)], [rec() for _ in range(2)]],
        "quantile_boundaries": [0.1, 0.5],
        "mean": 0.02,
        "variance": 0.4,
        "skewness": 3.5,
        "kurtosis": None,
        "most_positive_activation_records": top,
        "dataclass_name": "NeuronRecord",
    }
    if not tagged:
        doc = json.loads(
            json.dumps(doc)
            .replace(', "dataclass_name": "NeuronId"', "")
            .replace(', "dataclass_name": "NeuronRecord"', "")
        )
    return doc


def test_hand_written_openai_record_imports_with_splits_by_stride(tmp_path):
    doc = openai_record()
    (tmp_path / "7.json").write_text(json.dumps(doc))
    [fe] = import_neuron_records(tmp_path / "7.json")
    assert fe.feature == FeatureId("mlp", 3, 7, 1) and not fe.dead
    top = sorted(fe.select(sources=["top"]), key=lambda e: e.rank)
    assert [list(e.tokens) for e in top] == [r["tokens"] for r in doc["most_positive_activation_records"]]
    assert [list(e.activations) for e in top] == [r["activations"] for r in doc["most_positive_activation_records"]]
    assert [e.split for e in top] == ["explain", "score", "score", "test"] * 2  # OpenAI's train/calib/valid/test
    rnd = sorted(fe.select(sources=["random"]), key=lambda e: e.rank)
    assert [e.split for e in rnd] == ["score", "score", "test"] * 2  # random records are never explained
    q = fe.select(sources=["quantile"])
    assert sorted((e.quantile, e.rank) for e in q) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert fe.stats.max_activation == max(max(r["activations"]) for r in doc["most_positive_activation_records"])
    assert (fe.stats.mean, fe.stats.variance, fe.stats.skewness) == (0.02, 0.4, 3.5) and math.isnan(fe.stats.kurtosis)
    assert fe.stats.quantile_boundaries == (0.1, 0.5) and math.isnan(fe.stats.frac_active)
    ids = [e.window_id for e in fe.exemplars]
    assert len(set(ids)) == len(ids)


def test_dataclass_name_is_optional(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(openai_record(tagged=True)))
    (tmp_path / "b.json").write_text(json.dumps(openai_record(tagged=False)))
    assert "dataclass_name" not in (tmp_path / "b.json").read_text()
    assert import_neuron_records(tmp_path / "a.json") == import_neuron_records(tmp_path / "b.json")


def test_a_window_seen_twice_gets_one_id_and_one_split(tmp_path):
    doc = openai_record()
    doc["random_sample"][2] = doc["most_positive_activation_records"][1]  # top #1 -> score, random #2 -> test
    (tmp_path / "r.json").write_text(json.dumps(doc))
    [fe] = import_neuron_records(tmp_path / "r.json")
    by_split: dict[str, set[int]] = {}
    for e in fe.exemplars:
        by_split.setdefault(e.split, set()).add(e.window_id)
    assert not (by_split["explain"] & by_split["score"]) and not (by_split["score"] & by_split["test"])
    assert not (by_split["explain"] & by_split["test"])
    dup = [e for e in fe.exemplars if list(e.tokens) == doc["random_sample"][2]["tokens"]]
    assert len(dup) == 2 and {e.split for e in dup} == {"score"}


def test_stride3_scheme_interleaves_every_source(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(openai_record()))
    [fe] = import_neuron_records(tmp_path / "r.json", split_scheme="stride3")
    for source in ("top", "random"):
        ranked = sorted(fe.select(sources=[source]), key=lambda e: e.rank)
        assert [e.split for e in ranked] == [("explain", "score", "test")[i % 3] for i in range(len(ranked))]


def _features(layer: int, index: int, polarity: int = 1, seed: int = 0) -> FeatureExemplars:
    rng = random.Random(seed)
    ex, wid = [], 100 * seed
    for source, n in (("top", 5), ("random", 4), ("quantile", 6), ("hard_negative", 2)):
        for r in range(n):
            toks = tuple(rng.choice(["a", " cat", "\n", "é", "<|im_start|>"]) for _ in range(5))
            acts = tuple(rng.gauss(0, 2) for _ in range(5))
            q = r % 3 if source == "quantile" else -1
            ex.append(
                Exemplar(toks, acts, wid, source=source, split="explain", rank=r // 3 if q >= 0 else r, quantile=q)
            )
            wid += 1
    top_max = max(max(e.activations) for e in ex if e.source == "top")
    stats = FeatureStats(top_max, 0.1, 1.5, float("nan"), 9.0, 1234, 0.3, (0.2, 0.9))
    return FeatureExemplars(FeatureId("mlp", layer, index, polarity), tuple(ex), stats)


def _content(fe: FeatureExemplars):
    return sorted(
        (e.source, e.quantile, e.rank, e.tokens, e.activations) for e in fe.exemplars if e.source != "hard_negative"
    )


def _same_stats(a: FeatureStats, b: FeatureStats) -> bool:
    fields = ("max_activation", "mean", "variance", "skewness", "kurtosis")
    same = all(
        getattr(a, f) == getattr(b, f) or (math.isnan(getattr(a, f)) and math.isnan(getattr(b, f))) for f in fields
    )
    return same and a.quantile_boundaries == b.quantile_boundaries


@pytest.mark.parametrize("target", ["neurons", "records.jsonl", "records.json"])
def test_round_trip_keeps_tokens_activations_and_stats(tmp_path, target):
    records = [_features(3, 7, seed=1), _features(0, 12, seed=2), _features(11, 0, seed=3)]
    summary = export_neuron_records(records, tmp_path / target)
    assert (summary.records, summary.dropped_hard_negatives, summary.exemplars) == (3, 6, 3 * 15)
    back = {fe.feature.key: fe for fe in import_neuron_records(tmp_path / target)}
    assert set(back) == {r.feature.key for r in records}
    for fe in records:
        assert _content(back[fe.feature.key]) == _content(fe)
        assert _same_stats(back[fe.feature.key].stats, fe.stats)


def test_exported_file_has_openai_shape(tmp_path):
    export_neuron_records([_features(3, 7, seed=1)], tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "3" / "7.json").read_text())
    assert doc["dataclass_name"] == "NeuronRecord" and doc["neuron_id"] == {
        "layer_index": 3,
        "neuron_index": 7,
        "dataclass_name": "NeuronId",
    }
    assert set(doc) == {
        "dataclass_name",
        "neuron_id",
        "random_sample",
        "random_sample_by_quantile",
        "quantile_boundaries",
        "mean",
        "variance",
        "skewness",
        "kurtosis",
        "most_positive_activation_records",
    }
    assert doc["skewness"] is None and doc["kurtosis"] == 9.0  # NaN is written as null, like orjson
    assert [len(b) for b in doc["random_sample_by_quantile"]] == [2, 2, 2]
    first = doc["most_positive_activation_records"][0]
    assert first["dataclass_name"] == "ActivationRecord" and len(first["tokens"]) == len(first["activations"]) == 5
    assert "NaN" not in (tmp_path / "out" / "3" / "7.json").read_text()


def test_export_refuses_collisions_and_clobbering(tmp_path):
    with pytest.raises(InterchangeError, match=r"mlp/L3/7- and mlp/L3/7\+ are both layer 3 neuron 7"):
        export_neuron_records([_features(3, 7, 1), _features(3, 7, -1)], tmp_path / "x.jsonl")
    export_neuron_records([_features(3, 7)], tmp_path / "x.jsonl")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_neuron_records([_features(3, 8)], tmp_path / "x.jsonl")
    export_neuron_records([_features(3, 8)], tmp_path / "x.jsonl", overwrite=True)
    assert [fe.feature.index for fe in import_neuron_records(tmp_path / "x.jsonl")] == [8]


def simulation_results(layer, neuron, explanations):
    def scored(text, score):
        seq = {
            "tokens": ["a", "b"],
            "expected_activations": [0.5, 2.0],
            "activation_scale": "simulated_normalized_activations",
            "distribution_values": [[0, 1], [1, 2]],
            "distribution_probabilities": [[0.5, 0.5], [0.0, 1.0]],
            "uncalibrated_simulation": None,
            "dataclass_name": "SequenceSimulation",
        }
        sss = {
            "simulation": seq,
            "true_activations": [0.0, 3.1],
            "ev_correlation_score": 1.0,
            "rsquared_score": None,
            "absolute_dev_explained_score": None,
            "dataclass_name": "ScoredSequenceSimulation",
        }
        sim = {
            "scored_sequence_simulations": [sss],
            "ev_correlation_score": score,
            "rsquared_score": None,
            "absolute_dev_explained_score": None,
            "dataclass_name": "ScoredSimulation",
        }
        return {"explanation": text, "scored_simulation": sim, "dataclass_name": "ScoredExplanation"}

    return {
        "neuron_id": {"layer_index": layer, "neuron_index": neuron, "dataclass_name": "NeuronId"},
        "scored_explanations": [scored(t, s) for t, s in explanations],
        "dataclass_name": "NeuronSimulationResults",
    }


def test_import_released_explanations_from_openai_layout(tmp_path):
    for layer, neuron, expl in [
        (0, 5, [(" words about dogs", 0.42)]),
        (10, 3, [("commas", None), ("punctuation", 0.1)]),
    ]:
        (tmp_path / str(layer)).mkdir(exist_ok=True)
        (tmp_path / str(layer) / f"{neuron}.jsonl").write_text(
            json.dumps(simulation_results(layer, neuron, expl)) + "\n"
        )
    got = import_explanations(tmp_path)
    assert [(e.feature, e.text, e.sample_index) for e in got] == [
        ("mlp/L0/5+", "words about dogs", 0),
        ("mlp/L10/3+", "commas", 0),
        ("mlp/L10/3+", "punctuation", 1),
    ]
    assert got[0].raw == " words about dogs" and got[0].explainer == "openai:released"
    scored = import_scored_explanations(tmp_path)
    assert scored[0].score == 0.42 and math.isnan(scored[1].score) and scored[2].score == 0.1
    sim = scored[0].simulations[0]
    assert (sim.true_activations, sim.predicted) == ((0.0, 3.1), (0.5, 2.0)) and scored[0].n_exemplars == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("neuron_id"), "field 'neuron_id' is missing"),
        (
            lambda d: d["most_positive_activation_records"][1]["activations"].pop(),
            r"most_positive_activation_records\[1\]: 4 tokens but 3 activations",
        ),
        (
            lambda d: d["random_sample"][0].update(activations=[1.0, float("nan"), 0.0, 0.0]),
            r"random_sample\[0\]\.activations\[1\]: activation is not finite",
        ),
        (
            lambda d: d.update(dataclass_name="NeuronSimulationResults"),
            "dataclass_name is 'NeuronSimulationResults', expected 'NeuronRecord'",
        ),
        (lambda d: d["neuron_id"].update(layer_index=-1), r"neuron_id\.layer_index: expected a non-negative integer"),
        (
            lambda d: [
                d.pop(k) for k in ("most_positive_activation_records", "random_sample", "random_sample_by_quantile")
            ],
            "no activation records",
        ),
    ],
)
def test_bad_records_name_file_and_field(tmp_path, mutate, message):
    doc = openai_record()
    mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(InterchangeError, match=message) as err:
        import_neuron_records(tmp_path / "bad.json")
    assert "bad.json" in str(err.value)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(InterchangeError, match="does not exist"):
        import_neuron_records(tmp_path / "nope.json")
    (tmp_path / "x.jsonl").write_text(json.dumps(openai_record()) + "\n{broken\n")
    with pytest.raises(InterchangeError, match=r"x\.jsonl:2: not valid JSON"):
        import_neuron_records(tmp_path / "x.jsonl")
    (tmp_path / "e").mkdir()
    with pytest.raises(InterchangeError, match="holds no .json"):
        import_explanations(tmp_path / "e")
