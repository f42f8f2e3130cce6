"""Calibration: how well a simulator tells a planted rule's true explanation from wrong ones.

For every planted feature i (rules the simulator never trained on), its `split` exemplars are scored
under the rule's own explanation (the true score) and under other rules' explanations (the wrong
scores: every other rule's, or `n_wrong` drawn per feature with a seeded generator). Reported per
simulator:
- win_rate: the share of (feature, wrong explanation) pairs in which the true explanation scores
  higher; a true score that is not finite loses, a wrong score that is not finite loses to a finite true;
- rank1: for how many features the true explanation scores above every wrong one;
- mean_true / mean_wrong: the mean finite scores.
A good scorer has win_rate near 1 and mean_true well above mean_wrong; a flat one sits near 0.5.

Given each rule's family (and the families the simulator trained on) and natural paraphrases, the wrong
explanations are drawn half from the rule's own family (near misses: same grammar, other content) and
the rest from other families, the paraphrases are scored too, and the validity gates (a)-(c) of
`eval/gates.py` are computed from them; gate (d) needs the eval's teacher and baseline rows, so eval
adds it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

from neuroscribe.records import Explanation, FeatureExemplars
from neuroscribe.runs.eval import EvalResults
from neuroscribe.scorers import cached_scores

from .gates import RuleScores, ceiling, near_miss, paraphrases, to_dicts, unseen_families
from .results import REFERENCE_ROW, TEACHER, TOP_TOKENS, fmt

NOTE = (
    "True-vs-wrong: each held-out planted feature's test exemplars scored under its rule's true explanation "
    "and under other rules' explanations; win rate = share of (feature, wrong) pairs the true one wins."
)


def fidelity(true: Sequence[float], wrong: Sequence[Sequence[float]]) -> dict:
    """The calibration statistics (module doc) from per-feature true scores and their wrong scores."""
    wins = pairs = rank1 = 0
    for t, ws in zip(true, wrong):
        t_ok = t is not None and math.isfinite(t)
        beats = [t_ok and (w is None or not math.isfinite(w) or t > w) for w in ws]
        wins += sum(beats)
        pairs += len(ws)
        rank1 += bool(ws) and all(beats)
    finite = lambda xs: [x for x in xs if x is not None and math.isfinite(x)]  # noqa: E731
    flat_wrong = finite([w for ws in wrong for w in ws])
    return {
        "win_rate": wins / pairs if pairs else None,
        "rank1": rank1,
        "n_rules": len(true),
        "mean_true": statistics.fmean(finite(true)) if finite(true) else None,
        "mean_wrong": statistics.fmean(flat_wrong) if flat_wrong else None,
    }


def headline(calibration: dict) -> str:
    """One line per simulator: win rate, rank-1 count, mean true and wrong scores."""
    return "; ".join(
        f"{spec}: true beats wrong in {c['win_rate']:.2f} of pairs, ranks first for {c['rank1']}/{c['n_rules']} "
        f"rules (true {fmt(c['mean_true'])}, wrong {fmt(c['mean_wrong'])})"
        if c["win_rate"] is not None
        else f"{spec}: no rule scored"
        for spec, c in calibration["simulators"].items()
    )


def calibrate(
    simulators: Sequence,
    features: Sequence[FeatureExemplars],
    explanations: Sequence[str],
    names: Sequence[str],
    split: str = "test",
    n_wrong: int | None = None,
    seed: int = 0,
    cache=None,
    limit: dict[str, int] | None = None,
    families: Sequence[str] | None = None,
    paraphrases_of: Sequence[Sequence[str]] | None = None,
    trained_families: Sequence[str] = (),
) -> dict:
    """Calibration of every simulator on planted `features` with their true `explanations` (module doc).
    `limit` caps the features a slow simulator is run on (spec -> count: the first ones, in order)."""
    near, other = _wrong_draw(len(features), families, n_wrong, seed)
    phrasings = [tuple(p) for p in paraphrases_of] if paraphrases_of is not None else [()] * len(features)
    out = {}
    for sim in simulators:
        n = min(len(features), (limit or {}).get(sim.spec, len(features)))
        rows = []
        for i in range(n):  # the true explanation, its paraphrases, near misses, other wrong ones: one call
            key = features[i].feature.key
            texts = [explanations[i], *phrasings[i], *(explanations[j] for j in (*near[i], *other[i]))]
            es = [Explanation(key, t, "calibration", prompt_style="reference") for t in texts]
            scores = [s.score for s in cached_scores(sim, es, features[i], split, cache, stage="calibration")]
            true, para = scores[0], scores[1 : 1 + len(phrasings[i])]
            wrong = scores[1 + len(phrasings[i]) :]
            rows.append(
                {
                    "rule": names[i],
                    "feature": key,
                    "family": families[i] if families else "",
                    "true_score": true,
                    "paraphrase_scores": para,
                    "near_miss_scores": wrong[: len(near[i])],
                    "wrong_scores": wrong,
                    "wrong_rules": [names[j] for j in (*near[i], *other[i])],
                }
            )
        result = {**fidelity([r["true_score"] for r in rows], [r["wrong_scores"] for r in rows]), "rules": rows}
        if families is not None:
            rules = gate_rules(rows, trained_families)
            result["gates"] = to_dicts([near_miss(rules), unseen_families(rules), paraphrases(rules)])
        out[sim.spec] = result
    return {"split": split, "note": NOTE, "simulators": out}


def _wrong_draw(n: int, families: Sequence[str] | None, n_wrong: int | None, seed: int) -> tuple[list, list]:
    """Per feature, (near-miss indices: same family, other-family indices): every other rule without
    `n_wrong`; with families, half of `n_wrong` (rounded up) drawn from the rule's own family."""
    rng = random.Random(seed)
    others = [[j for j in range(n) if j != i] for i in range(n)]
    if families is None:
        drawn = others if n_wrong is None else [rng.sample(o, min(n_wrong, len(o))) for o in others]
        return [[] for _ in range(n)], drawn
    near, far = [], []
    for i, o in enumerate(others):
        same = [j for j in o if families[j] == families[i]]
        rest = [j for j in o if families[j] != families[i]]
        if n_wrong is None:
            near.append(same)
            far.append(rest)
            continue
        k = min(len(same), -(-n_wrong // 2))
        near.append(rng.sample(same, k))
        far.append(rng.sample(rest, min(len(rest), n_wrong - k)))
    return near, far


def gate_rules(rows: Sequence[dict], trained_families: Sequence[str] = ()) -> list[RuleScores]:
    """calibration.json's rows as the gates read them."""
    trained = set(trained_families)
    return [
        RuleScores(
            rule=r["rule"],
            family=r.get("family", ""),
            family_trained=r.get("family", "") in trained,
            true=r["true_score"],
            paraphrases=tuple(r.get("paraphrase_scores", ())),
            near_miss=tuple(r.get("near_miss_scores", ())),
            other_wrong=tuple(r["wrong_scores"][len(r.get("near_miss_scores", ())) :]),
        )
        for r in rows
    ]


def validity_gates(results: EvalResults) -> dict[str, list[dict]]:
    """Per simulator, the gates of `eval/gates.py`: (a)-(c) from the eval's calibration (when that
    simulator was calibrated), (d) from the eval's own rows on every feature with a known-true
    (reference) explanation: true rule vs teacher best-of-k vs top tokens, headline values (a failure
    counts 0)."""
    known = [f for f in results.features if f.has(REFERENCE_ROW) and not f.insufficient]
    calibrated = results.calibration.simulators if results.calibration else {}
    out = {}
    for sim in results.simulators:
        rows = [
            RuleScores(
                f.key,
                "",
                True,
                f.value(REFERENCE_ROW, sim),
                teacher=f.value(TEACHER, sim),
                top_tokens=f.value(TOP_TOKENS, sim),
            )
            for f in known
            if f.value(REFERENCE_ROW, sim) is not None
        ]
        gates = list(calibrated[sim].gates) if sim in calibrated else []
        if rows:
            gates += to_dicts([ceiling(rows)])
        if gates:
            out[sim] = gates
    return out
