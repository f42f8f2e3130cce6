"""The field's methods as their papers define them: conventions that span several modules."""

from __future__ import annotations

from neuroscribe.eval.results import Explainer, failure_as_null, summarise


def _feature(i: int, teacher: tuple[float | None, str], null: tuple[float | None, str]) -> dict:
    def entry(score, status):
        headline = None if status == "insufficient" else (score if status == "ok" else 0.0)
        return {"scores": {"sim": {"score": score, "headline": headline, "status": status}}}

    return {
        "feature": f"mlp/L0/{i}+",
        "kind": "mlp",
        "layer": 0,
        "results": {"teacher": entry(*teacher), "baseline_null": entry(*null)},
    }


def test_a_failed_explanation_counts_as_the_null_explanation_not_below_an_anti_correlated_one():
    features = [
        _feature(0, (0.5, "ok"), (0.2, "ok")),
        _feature(1, (None, "unparsed"), (0.3, "ok")),  # failed: counts as its null, 0.3
        _feature(2, (None, "undefined"), (None, "undefined")),  # the null is undefined too: 0.0
    ]
    assert failure_as_null(features, "teacher", "sim") == [0.5, 0.3, 0.0]
    explainers = [
        Explainer("teacher", "teacher", "teacher", 1, "best on score"),
        Explainer("baseline_null", "null", "baseline", 0, "the empty explanation"),
    ]
    summary = summarise(features, explainers, "sim", n_resamples=50)["teacher"]
    assert summary["mean"]["estimate"] == 0.5 / 3  # the headline convention itself is unchanged
    assert abs(summary["mean_failure_as_null"]["estimate"] - 0.8 / 3) < 1e-12
