"""Planted rules give the activations they claim, as FeatureExemplars shaped like collect's."""

from __future__ import annotations

import re

import pytest

from neuroscribe.corpus import builtin_documents
from neuroscribe.distill.planted.features import (
    FAMILIES,
    KIND,
    RULES,
    explanations_of,
    planted_features,
    simulator_rows,
    word_rule,
)
from neuroscribe.distill.planted.suite import PARTS, split_suite, suite
from neuroscribe.records import SPLITS


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def features(tok):
    rules = [RULES["digits"], RULES["comma"], RULES["after_the"], RULES["parentheses"], word_rule("object")]
    return rules, planted_features(tok, rules, window=24, n_top=9, n_random=9, max_windows=1500)


def active_runs(e):
    """(start, end) token index ranges of consecutive active tokens."""
    runs, start = [], None
    for i, a in enumerate(list(e.activations) + [0.0]):
        if a > 0 and start is None:
            start = i
        elif a == 0 and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_there_are_at_least_eight_rules_with_distinct_explanations():
    assert len(RULES) >= 8
    assert len({r.explanation for r in RULES.values()}) == len(RULES)


def test_local_rules_mark_exactly_the_tokens_holding_their_characters(features):
    rules, feats = features
    for rule, feature, char in ((rules[0], feats[0], r"\d"), (rules[1], feats[1], ",")):
        assert feature.max_activation == 1.0 and not feature.dead
        for e in feature.exemplars:
            assert [a > 0 for a in e.activations] == [bool(re.search(char, t)) for t in e.tokens], rule.name


def test_context_rules_mark_what_they_claim(features):
    _, feats = features
    after_the, parens, word = feats[2], feats[3], feats[4]
    for e in after_the.select(sources=["top"]):
        for start, _ in active_runs(e):  # the text before each marked word ends with "the" (unless cut off)
            if start == 0:
                continue
            assert re.search(r"\b[Tt]he\s*$", "".join(e.tokens[:start])), e.tokens
    for e in word.exemplars:
        text = "".join(e.tokens)
        hits = [t for t, a in zip(e.tokens, e.activations) if a > 0]
        assert all("object" in t.lower() or t.strip().lower() in "object" for t in hits)
        assert bool(hits) == bool(re.search(r"\bobject\b", text, re.I)) or e.source == "top"
    top = parens.select(sources=["top"])
    assert all(any(a > 0 for a in e.activations) for e in top)
    inside = sum(a > 0 for e in top for a in e.activations)
    assert inside > len(top) * 5  # whole spans inside brackets, not just a bracket token


def test_exemplars_are_shaped_like_collects(features, tok):
    rules, feats = features
    docs = list(builtin_documents())
    for i, feature in enumerate(feats):
        assert feature.feature == rules[i].feature and feature.feature.kind == KIND
        assert feature.feature.layer == FAMILIES.index(rules[i].family)
        for source, n in (("top", 9), ("random", 9)):
            chosen = feature.select(sources=[source])
            assert len(chosen) == n
            assert {e.split for e in chosen} == set(SPLITS)  # stride: every split gets some
            assert [e.rank for e in chosen] == list(range(n))
        ids = [e.window_id for e in feature.exemplars]
        assert len(ids) == len(set(ids))
        top = feature.select(sources=["top"])
        assert [sum(e.activations) for e in top] == sorted((sum(e.activations) for e in top), reverse=True)
    e = feats[0].exemplars[0]
    assert any("".join(e.tokens) in d for d in docs)  # tokens join back to the corpus text exactly
    assert tok.convert_tokens_to_ids(tok.tokenize("".join(e.tokens))) == list(e.token_ids)
    assert explanations_of(rules)[feats[4].feature.key] == 'the word "object"'


def test_the_suite_covers_every_family_with_distinct_true_explanations():
    rules = suite()
    assert len(rules) >= 150
    assert {r.family for r in rules} == set(FAMILIES) - {""}
    assert len({r.feature.key for r in rules}) == len(rules)  # stable keys never collide
    assert len({r.explanation for r in rules}) == len(rules)
    assert all(len(r.all_phrasings) >= 1 and r.explanation == r.all_phrasings[0] for r in rules)


def test_split_suite_is_disjoint_covers_families_and_ignores_order():
    rules = suite()
    parts = split_suite(rules)
    names = {p: {r.name for r in parts[p]} for p in PARTS}
    assert sum(map(len, names.values())) == len(rules)
    assert not (
        names["simulator"] & names["explainer"]
        or names["simulator"] & names["heldout"]
        or names["explainer"] & names["heldout"]
    )
    for family in {r.family for r in rules}:
        if sum(r.family == family for r in rules) >= 3:
            assert all(any(r.family == family for r in parts[p]) for p in PARTS), family
    shuffled = split_suite(list(reversed(rules)))
    assert {p: {r.name for r in shuffled[p]} for p in PARTS} == names  # the deal depends on names only
    assert {r.name for r in split_suite(rules, seed=1)["heldout"]} != names["heldout"]


def test_a_rules_feature_key_does_not_depend_on_the_suite():
    rule = word_rule("object")
    assert rule.feature == word_rule("object").feature
    assert rule.feature.key.startswith("planted/L1/")  # family "word" is layer 1


def test_simulator_rows_label_each_window_by_its_own_rule(tok):
    rules = [RULES["digits"], RULES["comma"], word_rule("object")]
    rows = simulator_rows(tok, rules, window=16, max_windows=600, per_rule=3, n_random=2, others=1, seed=0)
    assert len(rows) == len(rules) * (3 * 2 + 2)  # a top window under its own rule and one other; random: own
    by_key = {r.feature.key: r for r in rules}
    for row in rows:
        rule = by_key[row["feature"]]
        assert row["explanation"] in rule.all_phrasings
        chars = {"digits": r"\d", "comma": ",", "word:object": r"(?i)object"}[rule.name]
        if rule.name != "word:object":
            assert [a > 0 for a in row["activations"]] == [bool(re.search(chars, t)) for t in row["tokens"]]
        assert row["classes"] == [10 if a > 0 else 0 for a in row["activations"]]
    own = rows[0:6:2]  # the first rule's three top windows, each followed by its mismatched row
    assert all(any(a > 0 for a in r["activations"]) for r in own)  # a rule's top windows fire
    assert all(r["feature"] != rules[0].feature.key for r in rows[1:6:2])  # ... the others' rows are other rules


def test_mismatched_rows_are_half_near_misses_of_the_same_family(tok):
    """Gate (a) asks a judge to tell a rule from another of its family: half the mismatched labels of a
    top window come from the rule's own family (where it has others), the rest from any family."""
    rules = [word_rule(w) for w in ("object", "value", "function", "list")] + [RULES["digits"], RULES["comma"]]
    family = {r.feature.key: r.family for r in rules}
    rows = simulator_rows(tok, rules, window=16, max_windows=600, per_rule=2, n_random=1, others=2, seed=0)
    assert len(rows) == len(rules) * (2 * 3 + 1)
    first = rows[:7]  # word:object: top window, its 2 mismatched rows, the next top window's 3, one random
    assert first[0]["feature"] == rules[0].feature.key and first[3]["feature"] == rules[0].feature.key
    for own in (0, 3):
        mismatched = first[own + 1 : own + 3]
        fams = [family[r["feature"]] for r in mismatched]
        assert fams.count("word") >= 1 and all(r["feature"] != rules[0].feature.key for r in mismatched)
        assert {r["window_id"] for r in mismatched} == {first[own]["window_id"]}  # the same window, relabelled


def test_every_rule_has_paraphrases_outside_the_teacher_grammar():
    """Gate (c) needs true phrasings the teacher never writes: every phrase the patterns teacher produces
    matches TEACHER_GRAMMAR, and no paraphrase of any suite rule does (nor repeats a suite phrasing)."""
    from neuroscribe.backends.patterns import Run, candidates
    from neuroscribe.distill.planted.paraphrases import in_teacher_grammar, paraphrases
    from neuroscribe.distill.planted.suite import suite

    run_sets = [
        [Run(" cat", "the ", " sat"), Run(" cat", "a ", " ran"), Run(" dog", "the ", " sat")],
        [Run("2019", "in ", ","), Run("1999", "by ", ",")],
        [Run(",", "word", " and"), Run(",", "more", " or")],
        [Run(" running", "is ", "."), Run(" jumping", "was ", "."), Run(" singing", "is ", ".")],
        [Run(" value", "(the ", ")"), Run(" name", "(a ", ")")],
        [Run(" Paris", ". ", " is"), Run(" London", ". ", " was")],
        [Run(" unclear", " ", ""), Run(" undone", " ", ""), Run(" unseen", " ", "")],
    ]
    teacher = [text for runs in run_sets for _, text in candidates(runs)]
    assert len(teacher) >= 10 and all(in_teacher_grammar(t) for t in teacher), [
        t for t in teacher if not in_teacher_grammar(t)
    ]
    for rule in suite():
        said = paraphrases(rule)
        assert len(said) >= 2, rule.name
        assert not any(in_teacher_grammar(p) or p in rule.all_phrasings for p in said), (rule.name, said)


def test_graded_rules_span_the_label_classes_and_training_can_avoid_template_wording(tok):
    """Binary planted rules give only classes 0 and 10; graded ones fire at strengths fixed per matched text
    (the same word always alike), and paraphrase-only rows never carry a phrasing of the teacher's grammar."""
    from dataclasses import replace

    from neuroscribe.distill.planted.features import match_strength
    from neuroscribe.distill.planted.paraphrases import in_teacher_grammar, paraphrases

    by_name = {r.name: r for r in suite()}
    rules = [replace(by_name[n], graded=True) for n in ("shape:digits", "punct:,", "word:object")]
    rows = simulator_rows(
        tok, rules, window=16, max_windows=600, per_rule=3, n_random=2, others=2, seed=0, phrasings=paraphrases
    )
    assert len(rows) == len(rules) * (3 * 3 + 2)  # a top window under its own rule and two mismatched ones
    classes = {c for r in rows for c in r["classes"]}
    assert len(classes - {0}) >= 3, classes
    for row in rows:
        assert row["explanation"] in paraphrases(next(r for r in rules if r.feature.key == row["feature"]))
        assert not in_teacher_grammar(row["explanation"])
        for token, a in zip(row["tokens"], row["activations"]):
            if a > 0 and row["feature"] == rules[2].feature.key and token.strip().lower() == "object":
                assert a == pytest.approx(match_strength("object"))
    binary = simulator_rows(tok, [by_name["shape:digits"]], window=16, max_windows=600, per_rule=3, n_random=0, seed=0)
    assert {c for r in binary for c in r["classes"]} <= {0, 10}
