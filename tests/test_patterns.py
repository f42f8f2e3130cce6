"""The `patterns:` teacher reads the marked tokens of real explainer prompts and ranks template phrases.

Prompts are built by `explainer_messages` from planted features of the builtin corpus (SmolLM2's
tokenizer), so the teacher sees exactly what an LLM teacher would.
"""

from __future__ import annotations

import pytest

from neuroscribe.backends import ChatRequest, SamplingParams, load_backend
from neuroscribe.backends.patterns import Run, active_runs, candidates
from neuroscribe.cache import Cache
from neuroscribe.distill.planted.features import RULES, PlantedRule, planted_features, word_rule
from neuroscribe.prompts import explainer_messages, parse_explanation


@pytest.fixture(scope="module")
def smol_tok():
    from neuroscribe.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def prompts(smol_tok):
    rules = [
        word_rule("exception"),
        RULES["after_the"],
        RULES["comma"],
        RULES["digits"],
        PlantedRule("ly", 'adverbs ending in "-ly"', r"\b[a-z]+ly\b", family="morphology"),
    ]
    feats = planted_features(smol_tok, rules, window=24, n_top=12, n_random=6, max_windows=1500)
    return {r.name: explainer_messages(f, "highlighted", max_exemplars=6) for r, f in zip(rules, feats)} | {
        "plain:" + r.name: explainer_messages(f, "plain", max_exemplars=6) for r, f in zip(rules, feats)
    }


def test_the_top_candidate_names_what_the_marks_show(prompts):
    def top(name: str) -> str:
        return candidates(active_runs(prompts[name][-1]["content"]))[0][1]

    assert top("word:exception") == 'the word "exception"'
    assert any(t == 'the character ","' for _, t in candidates(active_runs(prompts["comma"][-1]["content"]))[:3])
    assert top("digits") in ("digits and numbers", "numbers and digits")
    assert top("plain:word:exception") == 'the word "exception"'  # the plain style's digit lines too
    assert any(
        t == 'the word right after "the"' for _, t in candidates(active_runs(prompts["after_the"][-1]["content"]))[:4]
    )
    assert any(t == 'words ending in "-ly"' for _, t in candidates(active_runs(prompts["ly"][-1]["content"]))[:4])


def test_candidates_rank_by_support_and_handle_no_marks():
    runs = [Run(" cat", "the", " sat"), Run(" cat", "a", "."), Run(" dog", "the", " ran")]
    ranked = candidates(runs)
    assert ranked[0] == (1.0, 'the words "cat" and "dog"')  # both words cover every run ...
    assert (2 / 3, 'the word "cat"') in ranked  # ... the single word two of three
    assert [s for s, _ in ranked] == sorted((s for s, _ in ranked), reverse=True)
    assert candidates([]) == [(0.0, "no clear pattern")]
    assert active_runs("1. nothing marked here") == []


def test_the_backend_answers_in_the_explanation_format_through_the_cache(prompts, tmp_path):
    with Cache(tmp_path / "c.sqlite") as cache:
        teacher = load_backend("patterns:v1", cache, stage="explain")
        msgs = tuple(prompts["word:exception"])
        requests = [ChatRequest(msgs, SamplingParams(temperature=1.0, seed=3), sample_index=i) for i in range(4)]
        out = teacher.generate(requests)
        texts = [parse_explanation(c.text).text for c in out]
        assert texts[0] == 'the word "exception"' and len(set(texts)) > 1
        greedy = teacher.generate([ChatRequest(msgs, SamplingParams(temperature=0.0))])[0]
        assert parse_explanation(greedy.text).text == texts[0]  # best-of-1 is the top candidate
        assert teacher.generate(requests)[0].cached and cache.usage().usd == 0.0
    with pytest.raises(ValueError, match="patterns:v1"):
        load_backend("patterns:v9")
