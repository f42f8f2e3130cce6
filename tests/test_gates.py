"""Validity gates (eval/gates.py): a content-reading judge passes them; a judge that rewards only the
template wording fails the paraphrase gate (and the near-miss one); failures and non-finite scores lose."""

from __future__ import annotations

import math
import re

from neuroscribe.eval.gates import GateConfig, RuleScores, all_gates, ceiling, near_miss, paraphrases, verdict

WORDS = ("cat", "harbour", "blue", "river", "lamp", "stone")
TEMPLATE = re.compile(r'^the word "(\w+)"$')


def wording_judge(rule_word: str, text: str) -> float:
    """Scores the grammar it was trained on, whatever word it names."""
    return 0.45 if TEMPLATE.match(text) else 0.03


def content_judge(rule_word: str, text: str) -> float:
    """Scores whether the explanation names the rule's word, however it is phrased."""
    return 0.5 if re.search(rf"\b{rule_word}\b", text) else 0.02


def scored_rules(judge) -> list[RuleScores]:
    out = []
    for i, word in enumerate(WORDS):
        others = [w for w in WORDS if w != word][:3]
        out.append(
            RuleScores(
                rule=f"word:{word}",
                family="word",
                family_trained=i % 2 == 0,  # half the rules come from a family the judge never trained on
                true=judge(word, f'the word "{word}"'),
                paraphrases=(judge(word, f"fires on {word} wherever it appears"), judge(word, f"mentions of {word}")),
                near_miss=tuple(judge(word, f'the word "{w}"') for w in others),
                other_wrong=(judge(word, "text inside brackets"),),
                teacher=judge(word, f"{word} and similar words") - 0.1,
                top_tokens=judge(word, f'"{word}", "the"') - 0.2,
            )
        )
    return out


def test_a_content_reading_judge_passes_every_gate():
    gates = all_gates(scored_rules(content_judge))
    assert [g.passed for g in gates] == [True, True, True, True], [g.detail for g in gates]
    assert verdict(gates).startswith("The judge passed all 4 validity gates")


def test_a_judge_that_rewards_only_template_wording_fails_the_paraphrase_gate():
    rules = scored_rules(wording_judge)
    gate = paraphrases(rules)
    assert gate.passed is False and gate.value < 0.75, gate.detail
    assert near_miss(rules).passed is False  # same grammar, other word: it cannot tell them apart
    opening = verdict(all_gates(rules))
    assert "FAILED" in opening and "(c)" in opening and "paraphrases beat wrong" in opening


def test_non_finite_scores_lose_and_a_heuristic_above_the_truth_fails_the_ceiling():
    good = scored_rules(content_judge)
    broken = [RuleScores(r.rule, r.family, r.family_trained, math.nan, near_miss=r.near_miss) for r in good]
    assert near_miss(broken).value == 0.0, "a NaN true score loses every pair"
    nan_wrong = [RuleScores(r.rule, r.family, True, r.true, near_miss=(math.nan,)) for r in good]
    assert near_miss(nan_wrong).value == 1.0, "a NaN wrong score loses to a finite true one"
    above = [RuleScores(r.rule, r.family, True, 0.2, top_tokens=0.23, teacher=0.1) for r in good]
    gate = ceiling(above)
    assert gate.passed is False and gate.value < 0 and "top-tokens" in gate.detail
    assert ceiling(above, GateConfig(ceiling_margin=0.05)).passed is True
    assert near_miss([RuleScores("r", "word", True, 0.3)]).passed is None  # nothing to judge: not measured
