"""Scoring by intervention: amplifying a neuron that writes a token raises that token, an explanation
naming it ranks high, the judge's items are balanced, and `score --intervention` writes it all."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from neuroscribe.distill.collect.finalize import TokenText
from neuroscribe.features import FeatureGroup
from neuroscribe.interventions import (
    Continuations,
    InterventionScore,
    continuations,
    contrastive_accuracy,
    judge_scores,
    named_token_percentile,
    named_tokens,
    with_null,
)
from neuroscribe.models import load_model
from neuroscribe.output_side import feature_writer


def _word_token(tok) -> int:
    """A token that is a whole word of 3+ letters, spelled back to itself: what an explanation can name."""
    text = TokenText(tok)
    for i in range(100, len(tok)):
        word = text.piece(i).strip()
        if (
            len(word) >= 3
            and word.isalpha()
            and i in (tok(w, add_special_tokens=False)["input_ids"][0] for w in (word, " " + word))
        ):
            return i
    raise AssertionError("the tiny tokenizer has no word token")


def _planted(tiny_llama, neuron: int = 3):
    """The tiny Llama with MLP neuron `neuron` of layer 1 writing the unembedding row of a word token."""
    model, tok = load_model(str(tiny_llama))
    target = _word_token(tok)
    head = model.get_output_embeddings().weight.detach()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, neuron] = 8.0 * head[target] / head[target].norm()
    return model, tok, target


def test_amplifying_a_neuron_raises_the_token_it_writes_and_an_explanation_naming_it_ranks_high(tiny_llama):
    model, tok, target = _planted(tiny_llama)
    writer = feature_writer(model, FeatureGroup("mlp", 1, (3,), (1,)))
    cont = continuations(model, tok, writer, 0, 40.0, max_new_tokens=4)
    assert cont.logprob_change.argmax() == target
    assert cont.base != cont.steered  # the steered continuation differs
    name = TokenText(tok).piece(target).strip()
    right, used = named_token_percentile(tok, f'the token "{name}"', cont.logprob_change)
    wrong, _ = named_token_percentile(tok, 'the token "zq"', cont.logprob_change)
    assert name in used and right > 0.99 and right > wrong
    assert math.isnan(named_token_percentile(tok, "", cont.logprob_change)[0])


def test_named_tokens_quoted_first_then_content_words():
    # quoted first; "word" is a stop word (explanations use it about anything)
    assert named_tokens('the word "because" in reasons, and commas') == ["because", "reasons", "commas"]


class _AlwaysA(torch.nn.Module):
    """A judge that always answers A (test double: the control for the order balancing)."""

    def __init__(self, a_id: int, vocab: int):
        super().__init__()
        self.a_id, self.vocab = a_id, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        logits[..., self.a_id] = 10.0
        return type("Out", (), {"logits": logits})()


def test_a_judge_that_always_answers_a_scores_chance(tiny_llama):
    model, tok, target = _planted(tiny_llama)
    writer = feature_writer(model, FeatureGroup("mlp", 1, (3,), (1,)))
    cont = continuations(model, tok, writer, 0, 40.0, max_new_tokens=3, prompts=("one", "two", "three"))
    a_id = tok(" A", add_special_tokens=False)["input_ids"][-1]
    accuracy, auroc = judge_scores(_AlwaysA(a_id, len(tok)), tok, "anything", cont)
    assert accuracy == 0.5 and auroc == 0.5  # each pair asked in both orders


def test_score_with_intervention_writes_its_scores_beside_the_simulation(tiny_llama, tmp_path):
    model, tok, target = _planted(tiny_llama)
    subject = tmp_path / "subject"
    model.save_pretrained(subject)
    tok.save_pretrained(subject)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "neuroscribe.cli", *args], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]

    store = tmp_path / "store"
    cli_args = ["--out", str(store), "--no-progress"]
    cli("collect", "--model", str(subject), "--features", "mlp:1:3", "--window", "16", "--max-windows", "48", *cli_args)
    name = TokenText(tok).piece(target).strip()
    explanations = tmp_path / "e.jsonl"
    rows = [
        {"feature": "mlp/L1/3+", "explanation": f'the token "{name}"'},
        {"feature": "mlp/L1/3+", "explanation": 'the token "zq"'},
    ]
    explanations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored"
    cli(
        "score",
        "--explanations",
        str(explanations),
        "--store",
        str(store),
        "--simulator",
        f"hf:{subject}",
        "--out",
        str(out),
        "--intervention",
        "--steer",
        "10",
        "--no-progress",
    )
    got = [json.loads(line) for line in (out / "interventions.jsonl").read_text().splitlines()]
    assert [g["explanation"] for g in got] == [r["explanation"] for r in rows]
    assert got[0]["named_token_percentile"] > got[1]["named_token_percentile"]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["intervention"]["judge_accuracy"] <= 1 and summary["intervention"]["steer"] == 10
    assert (out / "scored.jsonl").exists()


def _texts(prompts, base, steered) -> Continuations:
    return Continuations(tuple(prompts), tuple(base), tuple(steered), torch.zeros(4))


def _fluency_judge(explanation, prompt, options):
    """Never reads the explanation: the most repetitive continuation is the amplified one."""
    broken = [1 - len(set(o.split())) / max(1, len(o.split())) for o in options]
    return [1.0 if b == max(broken) else 0.0 for b in broken]


def test_a_judge_that_sees_only_fluency_scores_chance_on_the_contrastive_task():
    prompts = ("The weather today is", "She opened the door and")
    base = ("sunny and warm", "walked into the room")
    steered = [  # three features, each breaking fluency in its own way (and by its own amount)
        ("said said said said", "said said said said"),
        ("the the of the", "a a a b"),
        ("to to to to", "x y y y"),
    ]
    features = [_texts(prompts, base, s) for s in steered]
    unsteered = _texts(prompts, base, base)
    # steered vs unsteered: fluency alone gives it away
    assert contrastive_accuracy(_fluency_judge, "anything", features[0], [unsteered]) == 1.0
    # among steered continuations only: over the features, fluency is worth chance, 1/3
    scores = [
        contrastive_accuracy(_fluency_judge, "anything", f, [o for o in features if o is not f]) for f in features
    ]
    assert sum(scores) / len(scores) == pytest.approx(1 / 3)


def test_a_judge_that_always_answers_a_scores_exactly_chance_on_every_contrastive_item():
    prompts = ("one", "two")
    target, *others = (_texts(prompts, ("x", "y"), (f"t{i}", f"u{i}")) for i in range(4))
    always_a = lambda e, p, options: [1.0] + [0.0] * (len(options) - 1)  # noqa: E731
    assert contrastive_accuracy(always_a, "e", target, others) == pytest.approx(0.25)
    tied = lambda e, p, options: [0.5] * len(options)  # noqa: E731
    assert contrastive_accuracy(tied, "e", target, others) == pytest.approx(0.25)


def test_named_tokens_leave_out_function_words_of_input_side_explanations():
    assert named_tokens('fires right after "the" in dates') == ["the", "dates"]
    assert named_tokens("the token before the closing bracket") == ["closing", "bracket"]


def test_every_intervention_score_is_reported_minus_the_null_explanations():
    score = InterventionScore(0.75, 0.8, 0.9, ("x",), 0.5, 0.25)
    null = InterventionScore(0.6, 0.5, math.nan, (), 0.25, 0.25)
    got = with_null(score, null)
    assert got.judge_accuracy_vs_null == pytest.approx(0.15) and got.judge_auroc_vs_null == pytest.approx(0.3)
    assert got.contrastive_accuracy_vs_null == pytest.approx(0.25)
    assert got.named_token_percentile_vs_null == pytest.approx(0.4)  # the null names nothing: against 0.5
