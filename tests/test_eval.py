"""eval: held-out features only, every row scored alike on `test`, headline conventions (failures count
0, insufficient features left out for all), paired comparisons, reliability, several simulators, the
teacher-run checks, outputs and reruns. The pipeline is real (tiny Llama: collect -> explain -> distill
build -> a real PEFT LoRA adapter as student). The ordering tests use planted word features with a
test-double simulator (see QuotedWordSimulator for why)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import statistics

import numpy as np
import pytest
from test_datasets import candidate, write_scored_dir

from neuroscribe.configs import CollectConfig, DistillConfig, EvalConfig, ExplainConfig, MiningConfig
from neuroscribe.distill.collect import collect
from neuroscribe.distill.datasets import build_datasets
from neuroscribe.distill.explain import explain
from neuroscribe.eval.benchmark import best_or_first, evaluate, top_tokens_explanation
from neuroscribe.eval.heldout import LeakageError
from neuroscribe.records import Exemplar, FeatureExemplars, FeatureId, FeatureStats, SimulatedExemplar
from neuroscribe.runs.datasets import read_heldout
from neuroscribe.runs.eval import read_results
from neuroscribe.runs.store import ExemplarStore, write_store

MINING = MiningConfig(top_k=6, pool=16, quantiles=3, per_quantile=1, random_k=9, inactive_k=3, hard_negatives=1)
EXPLAINERS = [
    "teacher",
    "teacher_best_of_1",
    "student_best_of_k",
    "student_best_of_1",
    "base_best_of_1",
    "baseline_top_tokens",
    "baseline_random_feature",
    "baseline_null",
]


# --------------------------------------------------------------------------- a real tiny pipeline


@pytest.fixture(scope="module")
def pipeline(tiny_llama, tmp_path_factory):
    """collect -> explain (teacher = tiny Llama, k=3) -> distill build (2 units held out) -> LoRA student."""
    root = tmp_path_factory.mktemp("evalpipe")
    store = collect(
        CollectConfig(
            out=str(root / "store"),
            model=str(tiny_llama),
            features=("mlp:1:0-3",),
            window=12,
            max_windows=96,
            batch_size=16,
            mining=MINING,
            progress=False,
        )
    )
    spec = f"hf:{tiny_llama}"
    explain(
        ExplainConfig(
            store=str(store),
            out=str(root / "explain"),
            teacher=spec,
            simulator=spec,
            k=3,
            max_tokens=12,
            progress=False,
        )
    )
    keys = ExemplarStore(store).keys()
    (root / "heldout.txt").write_text("".join(f"{k}\n" for k in keys[:2]))
    build_datasets(
        DistillConfig(
            str(root / "explain"),
            str(root / "data"),
            threshold=-1.0,
            min_margin=0.0,
            validation_fraction=0.0,
            heldout_file=str(root / "heldout.txt"),
        )
    )
    heldout = read_heldout(root / "data")  # the two listed units, both polarities
    student = root / "student"
    _lora_adapter(tiny_llama, student, dataset=root / "data")
    return {
        "root": root,
        "store": store,
        "keys": keys,
        "heldout": heldout,
        "student": student,
        "spec": spec,
        "base": str(tiny_llama),
    }


def _lora_adapter(base, out, dataset) -> None:
    """A real (untrained) PEFT LoRA adapter folder, with the run facts a neuroscribe training run writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    (out / "neuroscribe_run.json").write_text(json.dumps({"kind": "sft", "dataset": str(dataset)}))
    log = [{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)]
    (out / "trainer_state.json").write_text(json.dumps({"log_history": log}))


def _cfg(p, out, **kw) -> EvalConfig:
    base = dict(
        store=str(p["store"]),
        features=str(p["root"] / "data" / "heldout.txt"),
        student=str(p["student"]),
        out=str(out),
        teacher_results=str(p["root"] / "explain"),
        simulators=(p["spec"],),
        base=p["base"],
        k=3,
        max_tokens=12,
        detection=True,
        n_resamples=300,
        progress=False,
    )
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def evaluated(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalout") / "eval"
    return evaluate(_cfg(pipeline, out))


def _scores(f: dict, name: str, sim: str) -> dict:
    return f["results"][name]["scores"][sim]


def test_eval_covers_exactly_the_held_out_features_on_the_test_split(evaluated, pipeline):
    res, sim = evaluated.results.data, pipeline["spec"]
    assert [f["feature"] for f in res["features"]] == read_heldout(pipeline["root"] / "data") == pipeline["heldout"]
    assert [e["name"] for e in res["explainers"]] == EXPLAINERS
    store = ExemplarStore(pipeline["store"])
    for f in res["features"]:
        record = store.get(f["feature"])
        test_rows = {(e.window_id, e.source) for e in record.select("test", ["top", "quantile", "random"])}
        assert {(e["window_id"], e["source"]) for e in f["exemplars"]} == test_rows
        assert set(f["results"]) == set(EXPLAINERS)
        for r in f["results"].values():
            s = r["scores"][sim]
            if s["status"] == "ok":  # every explainer is simulated on the same test exemplars
                assert -1 <= s["score"] <= 1 and s["headline"] == s["score"]
                assert [len(p) for p in s["predicted"]] == [len(e["tokens"]) for e in f["exemplars"]]
            elif s["status"] in ("unparsed", "undefined"):
                assert s["score"] is None and s["headline"] == 0.0  # a failure counts 0 in the headline


def test_best_of_k_selects_on_score_and_best_of_1_is_greedy(evaluated):
    for f in evaluated.results.data["features"]:
        best, first = f["results"]["student_best_of_k"], f["results"]["student_best_of_1"]
        cands = best["candidates"]
        assert [c["sample_index"] for c in cands] == [0, 1, 2]
        finite = [c["selection_score"] for c in cands if c["ok"] and c["selection_score"] is not None]
        if finite:
            assert best["selection_score"] == max(finite)
        assert first["candidates"] == [] and first["explanation"]["sample_index"] == 0  # its own greedy request
        teacher = f["results"]["teacher"]
        scores = [c["selection_score"] for c in teacher["candidates"] if c["ok"] and c["selection_score"] is not None]
        assert teacher["selection_score"] == max(scores)
        t_first = f["results"]["teacher_best_of_1"]["explanation"]
        assert t_first["sample_index"] == 0 and t_first["text"] == teacher["candidates"][0]["text"]


def test_baselines_come_from_the_explain_split_another_feature_and_nothing(evaluated, pipeline):
    store = ExemplarStore(pipeline["store"])
    teacher_text = {
        f["feature"]: f["results"]["teacher"]["explanation"]["text"] for f in evaluated.results.data["features"]
    }
    for f in evaluated.results.data["features"]:
        record = store.get(f["feature"])
        top = f["results"]["baseline_top_tokens"]["explanation"]
        peaks = {e.tokens[int(np.argmax(e.activations))] for e in record.select("explain", ["top", "quantile"])}
        quoted = [json.loads(q) for q in re.findall(r'"(?:[^"\\]|\\.)*"', top["text"])]
        assert quoted and set(quoted) <= peaks, (top["text"], peaks)
        other = f["results"]["baseline_random_feature"]["explanation"]
        other_key = re.search(r"\((.+)\)$", other["explainer"]).group(1)
        assert other_key != f["feature"]
        if other_key in teacher_text:
            assert other["text"] == teacher_text[other_key]
        null = f["results"]["baseline_null"]["explanation"]
        assert null["text"] == "" and null["explainer"] == "baseline:null" and null["ok"]


def test_summary_statistics_use_the_headline_convention(evaluated, pipeline):
    res, sim = evaluated.results.data, pipeline["spec"]
    for name in EXPLAINERS:
        rows = [_scores(f, name, sim) for f in res["features"]]
        values = [r["headline"] for r in rows if r["status"] != "insufficient"]
        s = res["summary"][sim][name]
        assert s["n"] == len(values) and s["n_failed"] == sum(r["status"] in ("unparsed", "undefined") for r in rows)
        assert s["n_insufficient"] == sum(r["status"] == "insufficient" for r in rows)
        if values:
            assert s["mean"]["estimate"] == pytest.approx(statistics.fmean(values))
            assert s["median"]["estimate"] == pytest.approx(statistics.median(values))
            assert s["mean"]["low"] <= s["mean"]["estimate"] <= s["mean"]["high"]
            assert s["failure_rate"] == pytest.approx(s["n_failed"] / len(values))
        if name != "teacher":
            pairs = [
                (_scores(f, name, sim)["headline"], _scores(f, "teacher", sim)["headline"]) for f in res["features"]
            ]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            vs = s["vs_teacher"]
            assert vs["wins"] + vs["ties"] + vs["losses"] == len(pairs) == s["n"]  # the same features, always
            if pairs:
                assert vs["difference"]["estimate"] == pytest.approx(statistics.fmean(a - b for a, b in pairs))
    assert res["summary"][sim]["teacher"]["vs_teacher"] is None
    assert set(res["summary"][sim]["teacher"]["by_group"]) == {f"{f['kind']} L{f['layer']}" for f in res["features"]}
    judged = [n for n in EXPLAINERS if any(f["results"][n]["explanation"]["ok"] for f in res["features"])]
    assert judged
    for name in judged:  # asked for, so computed wherever an explanation parsed
        assert {"detection", "detection_auroc", "fuzzing", "fuzzing_active"} <= set(res["summary"][sim][name]["judges"])


def test_comparisons_reliability_and_the_answer_paragraph(evaluated, pipeline):
    res, sim = evaluated.results.data, pipeline["spec"]
    comp = res["comparisons"][sim]
    gain = comp["distillation_gain"]
    pairs = [
        (_scores(f, "student_best_of_1", sim)["headline"], _scores(f, "base_best_of_1", sim)["headline"])
        for f in res["features"]
    ]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    assert gain["difference"]["estimate"] == pytest.approx(statistics.fmean(a - b for a, b in pairs))
    assert {"student_vs_teacher_best_of_1", "student_vs_teacher_best_of_k", "gap_closed"} <= set(comp)
    rel = res["reliability"][sim]
    assert set(rel["by_explainer"]) <= {
        "teacher_best_of_1",
        "student_best_of_1",
        "base_best_of_1",
        "baseline_top_tokens",
        "baseline_random_feature",
        "baseline_null",
    }
    for f in res["features"]:  # unselected rows are also scored on `score`; selected ones are not re-used
        assert (
            _scores(f, "student_best_of_1", sim)["selection_split_score"] is not None
            or _scores(f, "student_best_of_1", sim)["status"] != "ok"
        )
        assert _scores(f, "student_best_of_k", sim)["selection_split_score"] is None
    report = (evaluated.out / "report.md").read_text()
    opening = report.split("\n\n")[1]
    assert opening.startswith("**Did the student get better?**") and "base model" in opening
    assert "Split-half reliability" in opening


def test_outputs_are_strict_json_a_report_plots_and_the_model_card_table(evaluated):
    from matplotlib.image import imread

    from neuroscribe.train.cards import eval_table

    out = evaluated.out
    text = (out / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert read_results(out).data["features"] == json.loads(text)["features"]
    report = (out / "report.md").read_text()
    for needle in (
        "student best-of-3",
        "baseline: null explanation",
        "minus teacher",
        "plots/student_vs_base.png",
        "plots/training_loss.png",
        "browser.html",
        "`score`",
        "`test`",
        "failed (rate)",
    ):
        assert needle in report, needle
    for name in ("score_distributions", "student_vs_base", "score_by_group", "training_loss"):
        image = imread(out / "plots" / f"{name}.png")
        assert image.shape[0] > 300 and image.shape[1] > 300 and image[..., :3].std() > 0.05, name
    md, js = eval_table(out / "eval_table.md"), eval_table(out / "eval_table.json")
    for table in (md, js):
        assert "student best-of-3" in table and "mean score [95% CI]" in table and table.startswith("|")
    cost = evaluated.results.data["cost"]
    n = len(evaluated.results.data["features"])  # k = 3 samples per feature plus one greedy, one call each
    assert cost["student_best_of_k"]["fresh_calls"] == 3 * n and cost["student_best_of_1"]["fresh_calls"] == n
    assert cost["student_best_of_1"]["latency_s_per_explanation"] > 0
    assert cost["student_best_of_k"]["usd_per_explanation"] == 0.0  # a local model
    assert evaluated.results.data["training"][str(evaluated.results.data["config"]["student"])][0] == [1, 2.0]


def test_rerun_generates_and_simulates_nothing(evaluated, pipeline, tmp_path):
    again = evaluate(_cfg(pipeline, tmp_path / "again", cache=str(evaluated.out / "cache.sqlite")))
    usage = again.results.data["usage"]
    assert usage and all(u["calls"] == 0 for u in usage.values()), usage
    assert again.results.data["cost"]["student_best_of_k"]["latency_s_per_explanation"] is None
    for a, b in zip(again.results.data["features"], evaluated.results.data["features"]):
        for name in EXPLAINERS:
            assert a["results"][name]["explanation"] == b["results"][name]["explanation"]
            assert a["results"][name]["scores"] == b["results"][name]["scores"]


def test_a_fresh_teacher_spec_explains_best_of_k_itself_even_for_one_feature(pipeline, tmp_path):
    import dataclasses

    from neuroscribe.eval.benchmark import eval_command

    one = tmp_path / "one.txt"
    one.write_text(pipeline["heldout"][0] + "\n")
    lines: list[str] = []
    cfg = dataclasses.replace(
        _cfg(pipeline, tmp_path / "fresh"),
        features=str(one),
        datasets=str(pipeline["root"] / "data"),
        teacher=pipeline["spec"],
        teacher_results=None,
        k=2,
        detection=False,
        base=None,
    )
    res = eval_command(cfg, echo=lines.append).results.data
    assert res["provenance"]["teacher"] == pipeline["spec"]
    assert res["cost"]["teacher"]["fresh_calls"] == 2 and res["cost"]["teacher"]["latency_s_per_explanation"] > 0
    assert [e["name"] for e in res["explainers"]][:3] == ["teacher", "teacher_best_of_1", "student_best_of_k"]
    (f,) = res["features"]
    assert len(f["results"]["teacher"]["candidates"]) == 2
    # one feature: no other feature to borrow an explanation from, so that baseline is absent, not faked
    assert "baseline_random_feature" not in f["results"]
    assert res["summary"][pipeline["spec"]]["baseline_random_feature"]["n"] == 0
    assert any("student best-of-2" in line and "minus teacher" in line for line in lines), lines
    assert (tmp_path / "fresh" / "report.md").exists() and (tmp_path / "fresh" / "browser.html").exists()


def test_report_only_rebuild_from_results_json(evaluated, tmp_path):
    import shutil

    from neuroscribe.eval.benchmark import rebuild_report

    shutil.copy(evaluated.out / "results.json", tmp_path / "results.json")
    files = rebuild_report(tmp_path / "results.json")
    assert (tmp_path / "report.md").read_text() == (evaluated.out / "report.md").read_text()
    assert files["browser"].read_text() == (evaluated.out / "browser.html").read_text()


def test_results_json_round_trips_byte_for_byte_through_eval_results(evaluated, tmp_path):
    from neuroscribe.runs.eval import EvalResults, write_results

    read = read_results(evaluated.out)
    assert isinstance(read, EvalResults) and isinstance(evaluated.results, EvalResults)
    write_results(tmp_path, read)
    assert (tmp_path / "results.json").read_bytes() == (evaluated.out / "results.json").read_bytes()
    # the typed view agrees with the file: rows, the primary comparison (defined once), per-feature values
    sim = read.primary_simulator
    assert [e.name for e in read.explainers] == EXPLAINERS and read.primary == "distillation_gain"
    assert read.primary_comparison() == read.comparisons(sim)["distillation_gain"]
    assert read.primary_comparison().difference == read.data["comparisons"][sim]["distillation_gain"]["difference"]
    assert read.values("teacher", sim) == [_scores(f, "teacher", sim)["headline"] for f in read.data["features"]]
    assert read.summary(sim)["teacher"].n == read.data["summary"][sim]["teacher"]["n"]


def test_a_results_json_missing_a_field_names_the_file_and_the_field(evaluated, tmp_path):
    from neuroscribe.runs.files import RunFileError

    data = json.loads((evaluated.out / "results.json").read_text())
    path = tmp_path / "results.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "summary"}))
    with pytest.raises(RunFileError, match=re.escape(f"{path}: field 'summary' is missing")):
        read_results(tmp_path)
    del data["explainers"][1]["label"]
    path.write_text(json.dumps(data))
    with pytest.raises(RunFileError, match=re.escape(f"{path}: explainers[1]: field 'label' is missing")):
        read_results(path)
    path.write_text(json.dumps({**data, "schema_version": 1}))
    with pytest.raises(RunFileError, match=re.escape(f"{path}: field schema_version is 1, expected 2")):
        read_results(path)


# --------------------------------------------------------------------------- refusals


def test_features_seen_in_training_are_refused_by_name(pipeline, tmp_path):
    data = pipeline["root"] / "data"
    build = json.loads((data / "build.json").read_text())
    leaked = build["splits"]["train"][0]
    features = tmp_path / "features.txt"
    features.write_text(f"{pipeline['heldout'][0]}\n{leaked}\n")
    with pytest.raises(LeakageError, match=re.escape(leaked)) as err:
        evaluate(_cfg(pipeline, tmp_path / "o", features=str(features), datasets=str(data)))
    assert str(features) in str(err.value) and "build.json" in str(err.value)
    # without --datasets the student's own run record names its dataset folder: checked all the same
    with pytest.raises(LeakageError, match=re.escape(leaked)):
        evaluate(_cfg(pipeline, tmp_path / "o", features=str(features)))
    # a student that says nothing, and a list next to no dataset folder: cannot be checked, so refused
    with pytest.raises(FileNotFoundError, match="not a neuroscribe dataset folder"):
        evaluate(_cfg(pipeline, tmp_path / "o", features=str(features), student=pipeline["spec"]))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("prefix", ["", "hf:"])
def test_a_student_trained_on_another_dataset_is_checked_against_it(pipeline, tmp_path, prefix):
    other = tmp_path / "other_data"
    other.mkdir()
    target = pipeline["heldout"][1]
    (other / "build.json").write_text(json.dumps({"splits": {"train": [target], "validation": [], "heldout": []}}))
    student = tmp_path / "student"
    student.mkdir()
    (student / "neuroscribe_run.json").write_text(json.dumps({"kind": "sft", "dataset": str(other)}))
    with pytest.raises(LeakageError, match=re.escape(target)) as err:
        evaluate(_cfg(pipeline, tmp_path / "o", student=prefix + str(student)))
    assert str(other / "build.json") in str(err.value)


def test_bad_teacher_results_and_configs_are_refused(pipeline, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        _cfg(pipeline, tmp_path / "o", teacher=pipeline["spec"])
    bad = tmp_path / "teacher_on_test"
    write_scored_dir(bad, {k: [candidate(k, "x", 0.5)] for k in pipeline["heldout"]}, split="test")
    with pytest.raises(ValueError, match="field split is 'test'"):
        evaluate(_cfg(pipeline, tmp_path / "o", teacher_results=str(bad)))
    partial = tmp_path / "partial"
    write_scored_dir(partial, {pipeline["heldout"][0]: [candidate(pipeline["heldout"][0], "x", 0.5)]})
    with pytest.raises(KeyError, match=re.escape(pipeline["heldout"][1])):
        evaluate(_cfg(pipeline, tmp_path / "o", teacher_results=str(partial)))


def test_a_teacher_run_about_another_store_or_simulator_is_refused(pipeline, tmp_path):
    every = {k: [candidate(k, "x", 0.5)] for k in pipeline["heldout"]}
    elsewhere = tmp_path / "elsewhere"
    write_scored_dir(elsewhere, every, simulator=pipeline["spec"], store_fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match=r"store_fingerprint is 0123456789abcdef .* same store"):
        evaluate(_cfg(pipeline, tmp_path / "o", teacher_results=str(elsewhere)))
    other_sim = tmp_path / "other_sim"
    write_scored_dir(other_sim, every, simulator="finetuned:/some/simulator#abc")
    with pytest.raises(ValueError, match=r"field simulator is 'finetuned:/some/simulator#abc' .* first --simulator"):
        evaluate(_cfg(pipeline, tmp_path / "o", teacher_results=str(other_sim)))


# --------------------------------------------------------------------------- planted ordering

PLANTED = ("volcano", "harbour", "quantum", "meadow", "lantern", "glacier")
FILLER = ("the", "a", "of", "and", "we", "saw", "near", "old", "small", "it", "was", "quiet", "today", "again")


class QuotedWordSimulator:
    """TEST DOUBLE: predicts 9 on every token whose word the explanation names in double quotes, else 0.

    Why a double: no simulator that runs on this machine reads an explanation perfectly; the prompted
    SmolLM2-135M simulator is nearly flat (FIELD-NOTES), so an ordering test on it would test noise.
    This one follows the rule an ideal simulator would on these planted word features, so the order
    of the rows is known in advance and the test checks that eval builds baselines from the right data
    and wires explanations, scores and paired statistics to the right row.
    """

    def __init__(self, spec: str = "test:quoted-word", weight: float = 9.0):
        self.spec, self.weight = spec, weight

    def simulate(self, explanation, exemplars):
        words = {q.strip().lower() for q in re.findall(r'"([^"]*)"', explanation)}
        return [
            SimulatedExemplar(
                e.window_id,
                e.source,
                tuple(e.activations),
                tuple(self.weight if t.strip().lower() in words else 0.0 for t in e.tokens),
            )
            for e in exemplars
        ]


def planted_records(words=PLANTED, seed=0, no_random_in_test: int | None = None) -> list[FeatureExemplars]:
    """Feature i fires (4.0) on the word words[i] only. Every window holds every OTHER planted word,
    so an explanation of another feature predicts something (a finite, wrong score)."""
    rng = random.Random(seed)
    records = []
    for i, word in enumerate(words):
        exemplars = []
        for split, n_top, n_random in (("explain", 4, 2), ("score", 3, 3), ("test", 3, 3)):
            if split == "test" and i == no_random_in_test:
                n_random = 0
            for r in range(n_top + n_random):
                tokens = [" " + rng.choice(FILLER) for _ in range(10)]
                planted = [w for w in words if w != word] + ([word] * rng.randint(1, 2) if r < n_top else [])
                for w in planted:
                    tokens.insert(rng.randrange(len(tokens) + 1), " " + w)
                acts = tuple(4.0 if t == " " + word else 0.0 for t in tokens)
                source = "top" if r < n_top else "random"
                exemplars.append(
                    Exemplar(
                        tuple(tokens),
                        acts,
                        window_id=len(words) * 100 * i + len(exemplars),
                        source=source,
                        split=split,
                        rank=r if r < n_top else r - n_top,
                    )
                )
        records.append(FeatureExemplars(FeatureId("mlp", i % 2, i), tuple(exemplars), FeatureStats(max_activation=4.0)))
    return records


def planted_setup(root, words=PLANTED, unparsed: int | None = None, no_random_in_test: int | None = None):
    """A store of planted features, the teacher's candidates (the true explanation and a wrong one; for
    feature `unparsed` only an unparseable reply), reference explanations, and a dataset folder holding
    them all out."""
    records = planted_records(words, no_random_in_test=no_random_in_test)
    store = write_store(root / "store", records, {"model": "planted-words"})
    keys = [r.feature.key for r in records]
    cands = {
        k: [candidate(k, f'the word "{w}"', 0.9, 0), candidate(k, "words about the weather", 0.1, 1)]
        for k, w in zip(keys, words)
    }
    if unparsed is not None:
        cands[keys[unparsed]] = [candidate(keys[unparsed], "garbage", 0.5, 0, ok=False)]
    write_scored_dir(root / "teacher", cands, store=str(store), simulator="test:quoted-word")
    data = root / "data"
    data.mkdir()
    (data / "build.json").write_text(
        json.dumps({"splits": {"train": ["mlp/L9/0+"], "validation": [], "heldout": keys}})
    )
    (data / "heldout.txt").write_text("".join(k + "\n" for k in keys))
    (root / "truth.jsonl").write_text(
        "".join(json.dumps({"feature": k, "explanation": f'the word "{w}"'}) + "\n" for k, w in zip(keys, words))
    )
    return store, keys


def planted_eval(root, tiny_llama, simulators=None, **kw):
    setup = {k: kw.pop(k) for k in ("unparsed", "no_random_in_test") if k in kw}
    store, keys = planted_setup(root, **setup)
    cfg = EvalConfig(
        store=str(store),
        features=str(root / "data" / "heldout.txt"),
        student=str(tiny_llama),
        out=str(root / "eval"),
        teacher_results=str(root / "teacher"),
        simulators=("unused",),
        k=2,
        max_tokens=8,
        n_resamples=500,
        reference=str(root / "truth.jsonl"),
        progress=False,
        **kw,
    )
    return evaluate(cfg, simulators=simulators or [QuotedWordSimulator()])


def test_planted_features_order_the_rows_as_the_truth_says(tiny_llama, tmp_path):
    res = planted_eval(tmp_path, tiny_llama, report=False).results.data
    sim = "test:quoted-word"
    for f, word in zip(res["features"], PLANTED):
        r = f["results"]
        assert r["teacher"]["explanation"]["text"] == f'the word "{word}"'
        assert r["teacher"]["scores"][sim]["score"] == pytest.approx(1.0)
        assert r["reference"]["scores"][sim]["score"] == pytest.approx(1.0)
        assert r["baseline_top_tokens"]["explanation"]["text"] == f'the token " {word}"'
        assert r["baseline_top_tokens"]["scores"][sim]["score"] == pytest.approx(1.0)
        other = r["baseline_random_feature"]
        assert other["explanation"]["text"] != r["teacher"]["explanation"]["text"]
        assert other["scores"][sim]["score"] is not None and other["scores"][sim]["score"] < 0.2
        assert r["baseline_null"]["scores"][sim]["status"] == "undefined"  # says nothing: a constant prediction
    s = res["summary"][sim]
    rnd = s["baseline_random_feature"]["vs_teacher"]
    assert rnd["difference"]["high"] < 0 and rnd["losses"] == len(PLANTED) and rnd["win_rate"]["estimate"] == 0
    assert s["baseline_top_tokens"]["vs_teacher"]["ties"] == len(PLANTED)
    assert s["teacher"]["mean"]["low"] > s["baseline_random_feature"]["mean"]["high"]
    assert s["baseline_null"]["mean"]["estimate"] == 0.0 and s["baseline_null"]["n_failed"] == len(PLANTED)
    oracle = res["comparisons"][sim]["oracle_vs_null"]["difference"]
    assert oracle["estimate"] == pytest.approx(1.0) and oracle["low"] > 0
    # gate (d): the true rule ties the teacher and the top tokens here, so it is a valid ceiling
    (gate,) = res["gates"][sim]
    assert gate["name"] == "ceiling" and gate["passed"] is True and gate["n"] == len(PLANTED)


def test_eval_selects_and_reports_on_the_splits_the_store_names(tiny_llama, tmp_path):
    """A store collected with `--splits explain,pick,final`: selection reads `pick`, every number `final`;
    a teacher run scored on any other split is refused, and so is a store of two splits (selection and
    report would be one split)."""
    names = {"explain": "explain", "score": "pick", "test": "final"}
    planted_setup(tmp_path)  # the teacher run, truths and dataset folder of the planted words
    records = [
        FeatureExemplars(r.feature, tuple(dataclasses.replace(e, split=names[e.split]) for e in r.exemplars), r.stats)
        for r in planted_records()
    ]
    meta = {"model": "planted-words", "mining": {"splits": list(names.values())}}
    store = write_store(tmp_path / "renamed", records, meta)
    keys = [r.feature.key for r in records]
    cands = {
        k: [candidate(k, f'the word "{w}"', 0.9, 0), candidate(k, "the weather", 0.1, 1)] for k, w in zip(keys, PLANTED)
    }
    cfg = dict(
        store=str(store),
        features=str(tmp_path / "data" / "heldout.txt"),
        student=str(tiny_llama),
        simulators=("unused",),
        k=2,
        max_tokens=8,
        n_resamples=200,
        report=False,
        progress=False,
    )
    with pytest.raises(ValueError, match="field split is 'score'.*'pick'"):  # scored on the default name
        evaluate(
            EvalConfig(**cfg, out=str(tmp_path / "e0"), teacher_results=str(tmp_path / "teacher")),
            simulators=[QuotedWordSimulator()],
        )
    write_scored_dir(tmp_path / "teacher-pick", cands, store=str(store), simulator="test:quoted-word", split="pick")
    res = evaluate(
        EvalConfig(**cfg, out=str(tmp_path / "e1"), teacher_results=str(tmp_path / "teacher-pick")),
        simulators=[QuotedWordSimulator()],
    ).results
    assert res.config["selection_split"] == "pick" and res.config["report_split"] == "final"
    sim = "test:quoted-word"
    teacher = [f["results"]["teacher"]["scores"][sim] for f in res.data["features"]]
    assert all(s["score"] == pytest.approx(1.0) for s in teacher)
    assert all(row["selection_split_score"] is None for row in teacher)  # the teacher row was selected on `pick`
    two = write_store(tmp_path / "two", planted_records(), {"model": "m", "mining": {"splits": ["explain", "test"]}})
    with pytest.raises(ValueError, match="mining.splits.*three splits"):
        evaluate(
            EvalConfig(
                **{**cfg, "store": str(two)}, out=str(tmp_path / "e2"), teacher_results=str(tmp_path / "teacher")
            )
        )


def test_a_failed_explanation_counts_zero_and_an_insufficient_feature_is_left_out_for_everyone(tiny_llama, tmp_path):
    res = planted_eval(tmp_path, tiny_llama, report=False, unparsed=1, no_random_in_test=2).results.data
    sim = "test:quoted-word"
    s = res["summary"][sim]
    teacher = [f["results"]["teacher"]["scores"][sim] for f in res["features"]]
    assert teacher[1]["status"] == "unparsed" and teacher[1]["headline"] == 0.0
    assert teacher[2]["status"] == "insufficient" and teacher[2]["headline"] is None
    assert "no random exemplar" in res["features"][2]["insufficient"]
    assert (
        s["teacher"]["n_failed"] == 1 and s["teacher"]["n_insufficient"] == 1 and s["teacher"]["n"] == len(PLANTED) - 1
    )
    assert s["teacher"]["mean"]["estimate"] == pytest.approx((len(PLANTED) - 2) / (len(PLANTED) - 1))
    for name, row in s.items():  # paired comparisons always cover the same features
        assert row["n_insufficient"] == 1, name
        if row["vs_teacher"]:
            assert row["vs_teacher"]["difference"]["n"] == len(PLANTED) - 1


def test_every_simulator_gets_a_table_and_the_first_selects(tiny_llama, tmp_path):
    judge = QuotedWordSimulator("test:half-weight", weight=4.5)
    res = planted_eval(tmp_path, tiny_llama, simulators=[QuotedWordSimulator(), judge]).results.data
    assert res["provenance"]["simulators"] == ["test:quoted-word", "test:half-weight"]
    assert res["provenance"]["selection_simulator"] == "test:quoted-word"
    assert (
        set(res["summary"])
        == set(res["comparisons"])
        == set(res["reliability"])
        == set(res["provenance"]["simulators"])
    )
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Scored by `test:quoted-word` (selects best-of-k)" in report
    assert "## Scored by `test:half-weight` (second judge)" in report


def test_top_tokens_baseline_reads_only_the_explain_split():
    record = planted_records()[0]
    assert top_tokens_explanation(record).text == f'the token " {PLANTED[0]}"'
    # move the strongest peak into `test` with another word: the baseline must not see it
    leaked = [
        e
        if e.split != "test" or e.source != "top"
        else Exemplar((" zebra",) + e.tokens, (99.0,) + e.activations, e.window_id, e.source, e.split, e.rank)
        for e in record.exemplars
    ]
    assert "zebra" not in top_tokens_explanation(FeatureExemplars(record.feature, tuple(leaked))).text


def test_best_or_first_prefers_the_highest_finite_score_then_the_first_sample():
    k = "mlp/L0/1+"
    cands = (
        candidate(k, "a", float("nan"), 0),
        candidate(k, "b", 0.4, 1),
        candidate(k, "c", 0.4, 2),
        candidate(k, "d", 0.9, 3, ok=False),
    )
    assert best_or_first(cands).explanation.text == "b"
    none_finite = (candidate(k, "a", float("nan"), 0), candidate(k, "b", float("nan"), 1))
    assert best_or_first(none_finite).explanation.sample_index == 0


# --------------------------------------------------------------------------- SmolLM2 end to end


@pytest.mark.slow
def test_smollm2_student_and_simulator_end_to_end(tmp_path):
    """The real bundled model as student and simulator, on 2 planted features with k=2."""
    store, keys = planted_setup(tmp_path, PLANTED[:2])
    sim = "hf:smollm2-135m-instruct"
    meta = json.loads((tmp_path / "teacher" / "meta.json").read_text())
    (tmp_path / "teacher" / "meta.json").write_text(json.dumps({**meta, "simulator": sim}))
    cfg = EvalConfig(
        store=str(store),
        features=str(tmp_path / "data" / "heldout.txt"),
        student="smollm2-135m-instruct",
        out=str(tmp_path / "eval"),
        teacher_results=str(tmp_path / "teacher"),
        simulators=(sim,),
        k=2,
        max_tokens=24,
        n_resamples=200,
        progress=False,
    )
    res = evaluate(cfg).results.data
    assert res["provenance"]["student"] == sim
    oks = [
        f["results"][n]
        for f in res["features"]
        for n in ("student_best_of_1", "student_best_of_k")
        if f["results"][n]["explanation"]["ok"]
    ]
    assert oks, "SmolLM2 wrote no parseable explanation"
    for r in oks:
        assert r["explanation"]["text"] and r["explanation"]["explainer"] == sim
        s = r["scores"][sim]
        assert s["score"] is None or math.isfinite(s["score"])
        assert all(p is not None and all(0 <= v <= 9 for v in p) for p in s["predicted"])
    assert (tmp_path / "eval" / "browser.html").exists() and (tmp_path / "eval" / "report.md").exists()


def test_intervention_scores_every_row_of_the_subjects_features_and_the_report_shows_them(
    evaluated, pipeline, tmp_path
):
    """A rerun from the cache with --intervention: every row of every subject feature gets the three
    intervention scores (each in [0, 1]), the summary averages them per row, the report has the table."""
    again = evaluate(
        _cfg(pipeline, tmp_path / "iv", cache=str(evaluated.out / "cache.sqlite"), intervention=True, steer=8.0)
    )
    rows = again.results.data["intervention"]
    assert set(rows) == {e["name"] for e in again.results.data["explainers"]}
    scored = [f for f in again.results.data["features"] if not f["insufficient"]]
    for f in scored:
        for r in f["results"].values():
            iv = r["intervention"]
            assert 0 <= iv["judge_accuracy"] <= 1 and 0 <= iv["judge_auroc"] <= 1
            assert iv["named_token_percentile"] is None or 0 <= iv["named_token_percentile"] <= 1
    assert all(v["n_features"] == len(scored) for v in rows.values())
    mean = sum(f["results"]["teacher"]["intervention"]["judge_accuracy"] for f in scored) / len(scored)
    assert rows["teacher"]["judge_accuracy"] == pytest.approx(mean)
    report = (tmp_path / "iv" / "report.md").read_text()
    assert "## Scored by intervention" in report and "named_token_percentile" in report


def test_a_format_control_row_and_a_declared_primary_comparison(tiny_llama, tmp_path):
    """The control student is evaluated like the student (greedy best-of-1), compared with it, and a
    primary comparison named before the eval opens the report's answer; an unknown one is refused."""
    evaluated = planted_eval(tmp_path, tiny_llama, control=str(tiny_llama), primary="student_vs_format_control")
    res, sim = evaluated.results.data, "test:quoted-word"
    assert "control_best_of_1" in {e["name"] for e in res["explainers"]}
    comp = res["comparisons"][sim]["student_vs_format_control"]
    assert comp["b"] == "control_best_of_1" and comp["difference"]["n"] == len(PLANTED)
    # the same model on both sides, greedy: every pair ties
    assert comp["ties"] == len(PLANTED) and comp["difference"]["estimate"] == pytest.approx(0.0)
    opening = (evaluated.out / "report.md").read_text().split("\n\n")[1]
    assert opening.startswith("The judge passed its one validity gate (ceiling)."), opening[:200]
    assert (
        "**Primary comparison** (declared before the eval ran): student best-of-1 minus the format-control" in opening
    )
    assert res["config"]["primary"] == "student_vs_format_control" and res["provenance"]["control"]
    with pytest.raises(ValueError, match="--primary 'gain'"):
        planted_eval(tmp_path / "again", tiny_llama, primary="gain")


def test_several_student_seeds_get_a_hierarchical_interval_on_the_primary_comparison(tiny_llama, tmp_path):
    """Three 'seeds' of the student (the same tiny model three times) and three of the control: each is
    a row of its own, and the primary comparison gets the seeds x clusters x features interval."""
    evaluated = planted_eval(
        tmp_path,
        tiny_llama,
        control=str(tiny_llama),
        student_seeds=(str(tiny_llama), str(tiny_llama)),
        control_seeds=(str(tiny_llama), str(tiny_llama)),
        primary="student_vs_format_control",
    )
    res, sim = evaluated.results.data, "test:quoted-word"
    names = {e["name"] for e in res["explainers"]}
    assert {"student_best_of_1_s1", "student_best_of_1_s2", "control_best_of_1_s1", "control_best_of_1_s2"} <= names
    seeded = res["seeded"][sim]["student_vs_format_control"]
    assert seeded["seeds"] == 3 and seeded["b"] == ["control_best_of_1", "control_best_of_1_s1", "control_best_of_1_s2"]
    assert seeded["difference"]["estimate"] == pytest.approx(0.0) and seeded["difference"]["n"] == len(PLANTED)
    assert res["seeded"][sim]["student_vs_teacher_best_of_1"]["b"] == ["teacher_best_of_1"] * 3
    assert "Over the student's 3 training seeds" in (evaluated.out / "report.md").read_text()
    with pytest.raises(ValueError, match="--control-seeds pairs with --student-seeds"):
        planted_eval(tmp_path / "again", tiny_llama, student_seeds=(str(tiny_llama),), control_seeds=("a", "b"))
