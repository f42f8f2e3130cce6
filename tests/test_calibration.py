"""The demo's two trust numbers, computed from known inputs: the simulator calibration on planted rules
(true vs wrong explanations) and the headline's distillation gain, overall and per feature kind."""

from __future__ import annotations

import math
import re
import statistics

import pytest
from test_eval import PLANTED, QuotedWordSimulator, planted_records

from neuroscribe.eval.calibration import calibrate, fidelity, headline
from neuroscribe.eval.report import answer
from neuroscribe.eval.results import Explainer, by_kind, comparisons
from neuroscribe.runs.eval import EvalResults

NAN = float("nan")


def test_fidelity_counts_pairs_rank1_and_means_by_hand():
    true = [0.5, 0.1, NAN]
    wrong = [[0.2, 0.6], [0.0, NAN], [0.3]]
    got = fidelity(true, wrong)
    # wins: 0.5>0.2 yes, 0.5>0.6 no; 0.1>0.0 yes, finite true beats a NaN wrong; a NaN true loses
    assert got["win_rate"] == pytest.approx(3 / 5)
    assert got["rank1"] == 1 and got["n_rules"] == 3
    assert got["mean_true"] == pytest.approx(0.3)
    assert got["mean_wrong"] == pytest.approx(statistics.fmean([0.2, 0.6, 0.0, 0.3]))
    assert fidelity([], [])["win_rate"] is None


def _inputs():
    records = planted_records()
    truths = [f'the word "{w}"' for w in PLANTED]
    return records, truths, list(PLANTED)


def test_an_ideal_simulator_ranks_every_true_rule_first_and_a_flat_one_none(tmp_path):
    records, truths, names = _inputs()
    ideal, flat = QuotedWordSimulator(), QuotedWordSimulator("test:flat", weight=0.0)
    cal = calibrate([ideal, flat], records, truths, names, n_wrong=3, seed=1)
    good, bad = cal["simulators"]["test:quoted-word"], cal["simulators"]["test:flat"]
    assert cal["split"] == "test"
    assert good["win_rate"] == 1.0 and good["rank1"] == len(PLANTED) and good["mean_true"] == pytest.approx(1.0)
    assert all(
        len(r["wrong_scores"]) == 3 and r["feature"] == rec.feature.key for r, rec in zip(good["rules"], records)
    )
    assert good["mean_wrong"] < 0.2
    # a constant prediction has no correlation: every true score is NaN and loses
    assert bad["win_rate"] == 0.0 and bad["rank1"] == 0 and bad["mean_true"] is None
    line = headline(cal)
    assert "test:quoted-word: true beats wrong in 1.00 of pairs, ranks first for 6/6 rules" in line
    assert "test:flat: true beats wrong in 0.00 of pairs" in line


def test_a_tie_is_not_a_win():
    records, truths, names = _inputs()
    given = list(truths)
    given[1] = truths[0]  # feature 1 is "explained" as feature 0: feature 0 now ties with a wrong one
    cal = calibrate([QuotedWordSimulator()], records, given, names)["simulators"]["test:quoted-word"]
    rows = cal["rules"]
    assert rows[0]["true_score"] == pytest.approx(1.0) and 1.0 in [pytest.approx(s) for s in rows[0]["wrong_scores"]]
    assert all(math.isfinite(s) for s in rows[1]["wrong_scores"]) and rows[1]["true_score"] < 0.5
    assert cal["rank1"] == len(PLANTED) - 2 and cal["win_rate"] < 1.0


def test_limit_caps_a_slow_simulator_to_its_first_rules():
    records, truths, names = _inputs()
    sim = QuotedWordSimulator("test:slow")
    cal = calibrate([sim], records, truths, names, limit={"test:slow": 2})
    assert cal["simulators"]["test:slow"]["n_rules"] == 2


SIM = "test:sim"
EXPLAINERS = [
    Explainer("teacher", "teacher best-of-4", "teacher", 4, "best on score"),
    Explainer("student_best_of_1", "student", "student", 1, "greedy"),
    Explainer("base_best_of_1", "base", "base", 1, "greedy"),
]


def _feature(kind: str, student: float, base: float, teacher: float) -> dict:
    row = lambda v: {"scores": {SIM: {"headline": v, "status": "ok"}}}  # noqa: E731
    return {
        "kind": kind,
        "layer": 0,
        "results": {"student_best_of_1": row(student), "base_best_of_1": row(base), "teacher": row(teacher)},
    }


def test_distillation_gain_per_kind_is_the_paired_mean_difference_of_that_kind_alone():
    planted = [_feature("planted", 0.5 + 0.01 * i, 0.1, 0.6) for i in range(10)]
    real = [_feature("mlp", 0.0, 0.05 * (i % 2), 0.1) for i in range(6)]
    parts = by_kind(planted + real, EXPLAINERS, SIM, n_resamples=500)
    gain_planted = parts["planted"]["comparisons"]["distillation_gain"]["difference"]
    gain_real = parts["mlp"]["comparisons"]["distillation_gain"]["difference"]
    assert gain_planted["estimate"] == pytest.approx(statistics.fmean(0.4 + 0.01 * i for i in range(10)))
    assert gain_planted["low"] > 0 and gain_planted["n"] == 10
    assert gain_real["estimate"] == pytest.approx(-0.025) and gain_real["high"] <= 0
    overall = comparisons(planted + real, EXPLAINERS, SIM, n_resamples=500)["distillation_gain"]["difference"]
    assert overall["n"] == 16 and gain_real["estimate"] < overall["estimate"] < gain_planted["estimate"]
    assert by_kind(planted, EXPLAINERS, SIM) == {}  # one kind: nothing to split


def test_the_answer_paragraph_states_the_gain_its_verdict_and_each_kind():
    planted = [_feature("planted", 0.5, 0.1 + 0.01 * i, 0.6) for i in range(8)]
    real = [_feature("mlp", 0.0 + 0.01 * i, 0.0, 0.1) for i in range(4)]
    feats = planted + real
    summary = {
        e.name: {"n": 12, "n_unparsed": 1 if e.name == "student_best_of_1" else 0, "parse_failure_rate": 1 / 12}
        for e in EXPLAINERS
    }
    results = {
        "features": feats,
        "provenance": {"simulators": [SIM]},
        "comparisons": {SIM: comparisons(feats, EXPLAINERS, SIM, n_resamples=500)},
        "by_kind": {SIM: by_kind(feats, EXPLAINERS, SIM, n_resamples=500)},
        "summary": {SIM: summary},
    }
    text = answer(EvalResults(results))
    gain = results["comparisons"][SIM]["distillation_gain"]["difference"]
    assert text.startswith("**Did the student get better?**")
    assert f"{gain['estimate']:.3f}" in text and "the 95% interval lies above zero" in text
    assert "On the 8 held-out planted features (known answer) alone: 0.365" in text
    assert "On the 4 held-out real MLP-neuron features alone" in text
    assert "failed to parse for 1 of 12 features (8.3%)" in text
    # a failed validity gate is named first, before any result
    records, truths, names = _inputs()
    families = ["word" if i % 2 else "other" for i in range(len(records))]
    cal = calibrate(
        [QuotedWordSimulator(SIM)],
        records,
        truths,
        names,
        n_wrong=2,
        families=families,
        paraphrases_of=[(f"fires wherever {w} appears",) for w in names],
        trained_families=["word"],
    )
    results["gates"] = {SIM: cal["simulators"][SIM]["gates"]}
    first = answer(EvalResults(results)).split("\n")[0]
    assert first.startswith("**The judge FAILED 1 of 3 validity gates**") and "(c) do paraphrases" in first


class AnyWordSimulator(QuotedWordSimulator):
    """TEST DOUBLE (see QuotedWordSimulator): predicts 9 on every token whose word the explanation
    contains anywhere, quoted or not — a simulator that reads content rather than the template."""

    def simulate(self, explanation, exemplars):
        quoted = " ".join(f'"{w}"' for w in re.findall(r"[a-z]+", explanation.lower()))
        return super().simulate(quoted, exemplars)


def test_calibration_draws_near_misses_scores_paraphrases_and_gates_a_template_reader():
    """The quoted-word simulator reads only the `"X"` template: the same rule paraphrased without quotes
    predicts nothing, so it fails the paraphrase gate; a content reader passes it."""
    records, truths, names = _inputs()
    families = ["word" if i % 2 else "other" for i in range(len(records))]
    paraphrases_of = [(f"fires wherever {w} appears", f"mentions of {w}") for w in names]
    reader = AnyWordSimulator("test:any-word")
    cal = calibrate(
        [QuotedWordSimulator(), reader],
        records,
        truths,
        names,
        n_wrong=2,
        seed=0,
        families=families,
        paraphrases_of=paraphrases_of,
        trained_families=["word"],
    )
    template, content = cal["simulators"]["test:quoted-word"], cal["simulators"]["test:any-word"]
    for r, fam in zip(template["rules"], families):
        assert r["family"] == fam and len(r["paraphrase_scores"]) == 2 and len(r["wrong_scores"]) == 2
        assert len(r["near_miss_scores"]) == 1  # half of n_wrong, drawn from the rule's own family
        near, far = (families[names.index(n)] for n in r["wrong_rules"])
        assert near == fam != far
    gates = {g["name"]: g for g in template["gates"]}
    assert gates["paraphrases"]["passed"] is False and gates["near_miss"]["passed"] is True
    assert gates["unseen_families"]["n"] == 3 * 2  # the "other" family's rules, two wrong each
    assert all(g["passed"] for g in content["gates"]), content["gates"]


def test_the_answer_paragraph_says_the_gain_once_with_or_without_seeds():
    """One 'Did the student get better?' sentence: the gain when a base row exists, else that it is not
    measured — never both (a seeded interval is added, not swapped in)."""
    planted = [_feature("planted", 0.5, 0.1 + 0.01 * i, 0.6) for i in range(6)]
    results = {
        "features": planted,
        "provenance": {"simulators": [SIM]},
        "comparisons": {SIM: comparisons(planted, EXPLAINERS, SIM, n_resamples=200)},
        "by_kind": {},
        "summary": {SIM: {}},
    }
    text = answer(EvalResults(results))
    assert text.count("**Did the student get better?**") == 1 and "not measured here" not in text
    results["comparisons"][SIM].pop("distillation_gain")
    text = answer(EvalResults(results))
    assert text.count("**Did the student get better?**") == 1 and "not measured here" in text
