"""The fine-tuned simulator's format: labels, tokenizer alignment, masking, class ids and read-out.

Real tokenizers (the tiny BPE fixture, SmolLM2's, a second tiny BPE with another vocabulary) and a
real tiny Llama; every expected value is computed independently (per character, by hand, or by a
plain full forward) rather than by the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from neuroscribe.distill.planted.features import RULES, planted_features
from neuroscribe.records import Exemplar
from neuroscribe.runs.simulator import read_simulator_file, write_simulator_file
from neuroscribe.simulators.finetuned import FinetunedSimulator
from neuroscribe.simulators.finetuned_format import (
    IGNORE,
    N_CLASSES,
    SimulatorFormat,
    activation_classes,
    align_max,
    class_token_ids,
    contiguous_spans,
    encode_text,
    expected_classes,
    header,
    prefix_ids,
    simulator_labels,
    training_example,
)
from neuroscribe.train.simulator_loss import ClassCrossEntropy, SimulatorCollator


@pytest.fixture(scope="module")
def tiny_tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def smol_tok():
    from neuroscribe.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from neuroscribe.models import load_model

    return load_model(str(tiny_llama))


def test_activation_classes_follow_the_label_rule():
    acts = [-1.0, 0.0, 0.19, 0.2, 1.0, 1.99, 2.0, 3.0]
    assert activation_classes(acts, 2.0) == [0, 0, 1, 1, 5, 9, 10, 10]
    assert activation_classes(acts, 0.0) == [0] * len(acts)


def test_a_weak_activation_is_class_1_for_the_simulator_as_it_is_digit_1_in_the_prompts():
    from neuroscribe.prompts import normalise

    acts = [0.0, 0.01, 0.05, 0.5, 1.0]
    assert activation_classes(acts, 1.0)[:4] == normalise(acts, 1.0)[:4] == [0, 1, 1, 5]


def test_a_simulator_trained_on_the_old_labels_is_refused_with_its_version(tiny_tok, tmp_path):
    import json

    write_simulator_file(tmp_path, SimulatorFormat.for_tokenizer(tiny_tok))
    data = json.loads((tmp_path / "simulator.json").read_text())
    (tmp_path / "simulator.json").write_text(json.dumps({**data, "format_version": "neuroscribe-simulator/1"}))
    with pytest.raises(Exception, match="neuroscribe-simulator/1.*neuroscribe-simulator/2"):
        read_simulator_file(tmp_path)


def test_class_ids_are_eleven_distinct_ordinary_vocabulary_ids(tiny_tok, smol_tok):
    smol = class_token_ids(smol_tok)
    # SmolLM2 splits "10" into two digits: classes 0..9 are the digits, 10 is " ten".
    assert smol_tok.convert_ids_to_tokens(list(smol)) == [str(d) for d in range(10)] + ["Ġten"]
    tiny = class_token_ids(tiny_tok)
    assert len(set(tiny)) == N_CLASSES and not set(tiny) & set(tiny_tok.all_special_ids)
    assert all(0 <= i < len(tiny_tok) for i in tiny)
    assert tiny[:10] == tuple(tiny_tok(str(d), add_special_tokens=False)["input_ids"][0] for d in range(10))


def test_contiguous_spans_give_gaps_to_the_next_token():
    assert contiguous_spans([(1, 4), (5, 8)], 10) == [(0, 4), (4, 10)]
    assert contiguous_spans([(0, 2), (2, 2), (2, 5)], 5) == [(0, 2), (2, 2), (2, 5)]


def test_align_max_by_hand():
    source, values = [(0, 3), (3, 10)], [2, 7]
    assert align_max(values, source, [(0, 2), (2, 5), (5, 10)]) == [2, 7, 7]
    assert align_max(values, source, [(4, 4)]) == [7]  # an empty span is a point inside (3, 10)
    assert align_max(values, source, [(12, 14)]) == [None]
    assert align_max(values, source, [(12, 14)], nearest_fallback=True) == [7]


def per_character_labels(tokens, classes, spans) -> list[int]:
    """Reference: paint each character with its subject token's class, then max over each span."""
    chars = [c for tok, c in zip(tokens, classes) for _ in tok]
    return [max(chars[s:e]) if e > s else IGNORE for s, e in spans]


@pytest.fixture(scope="module")
def small_vocab_tok(tmp_path_factory):
    from builders import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok300"), vocab_size=300)


@pytest.mark.parametrize(
    "subject,simulator",
    [("tiny", "tiny"), ("tiny", "smollm2"), ("vocab300", "smollm2"), ("vocab300", "tiny"), ("smollm2", "vocab300")],
)
def test_labels_align_across_tokenizers(subject, simulator, tiny_tok, smol_tok, small_vocab_tok):
    """Subject and simulator tokenizers: the 512-token BPE fixture, a 300-token BPE, SmolLM2's (49k)."""
    toks = {"tiny": tiny_tok, "smollm2": smol_tok, "vocab300": small_vocab_tok}
    sub_tok, sim_tok = toks[subject], toks[simulator]
    rules = [RULES["digits"], RULES["capitalised"], RULES["after_the"]]
    features = planted_features(sub_tok, rules, window=24, n_top=6, n_random=3, max_windows=400)
    active = mixed = 0
    for feature in features:
        for e in feature.exemplars:
            classes = activation_classes(e.activations, feature.max_activation)
            enc = encode_text(sim_tok, e.tokens)
            labels = simulator_labels(enc, classes)
            assert labels == per_character_labels(e.tokens, classes, enc.spans)
            assert sim_tok.decode(list(enc.ids)) == "".join(e.tokens)
            if subject == simulator:
                assert list(enc.ids) == list(e.token_ids) and labels == classes
            active += sum(c > 0 for c in classes)
            chars = [c for tok, c in zip(e.tokens, classes) for _ in tok]
            mixed += sum(len(set(chars[s:t])) > 1 for s, t in enc.spans)
    assert active > 30  # the rules really fired
    if subject != simulator and simulator != "vocab300":
        assert mixed > 0  # some simulator token straddles subject tokens of different classes


def test_header_positions_are_masked_and_text_positions_labelled(tiny_tok):
    tokens, classes = ("The", " bridge", " opened", " in", " 1932", "."), [0, 0, 1, 0, 10, 0]
    ids, labels = training_example(tiny_tok, "four-digit years", tokens, classes)
    n_prefix = len(prefix_ids(tiny_tok, "four-digit years"))
    assert tiny_tok.decode(ids[:n_prefix]) == header("four-digit years")
    assert labels[:n_prefix] == [IGNORE] * n_prefix
    assert IGNORE not in labels[n_prefix:] and max(labels[n_prefix:]) == 10
    assert tiny_tok.decode(ids[n_prefix:]) == "".join(tokens)
    # max_length cuts from the end
    short_ids, short_labels = training_example(tiny_tok, "four-digit years", tokens, classes, max_length=n_prefix + 2)
    assert short_ids == ids[: n_prefix + 2] and short_labels == labels[: n_prefix + 2]
    with pytest.raises(ValueError, match="classes must be 0..10"):
        training_example(tiny_tok, "x", tokens, [11, 0, 0, 0, 0, 0])


def test_loss_ignores_header_and_padding_and_matches_hand_cross_entropy(tiny_tok):
    rows = [
        {"explanation": "commas", "tokens": ["a", ",", " b"], "classes": [0, 10, 0]},
        {"explanation": "a much longer description of the unit", "tokens": ["x"], "classes": [3]},
    ]
    batch = SimulatorCollator(tiny_tok)(rows)
    ids = class_token_ids(tiny_tok)
    loss_fn = ClassCrossEntropy(ids)
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, len(tiny_tok))
    loss = loss_fn({"logits": logits}, batch["labels"])
    # by hand: mean over labelled positions of -log softmax(class logits)[label]
    pos = (batch["labels"] != IGNORE).nonzero().tolist()
    hand = sum(-torch.log_softmax(logits[b, t, list(ids)], -1)[batch["labels"][b, t]].item() for b, t in pos) / len(pos)
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    assert len(pos) == 4  # 3 + 1 text tokens, whatever the header lengths
    masked = batch["labels"] == IGNORE
    changed = logits.clone()
    changed[masked] = torch.randn_like(changed[masked]) * 100  # header, BOS and padding positions
    assert loss_fn({"logits": changed}, batch["labels"]).item() == pytest.approx(loss.item(), rel=1e-6)
    changed[pos[0][0], pos[0][1], ids[0]] += 5.0
    assert loss_fn({"logits": changed}, batch["labels"]).item() != pytest.approx(loss.item(), rel=1e-6)
    # summed and divided by the accumulated batch's labelled count
    assert loss_fn({"logits": logits}, batch["labels"], num_items_in_batch=8).item() == pytest.approx(
        hand / 2, rel=1e-5
    )


def test_expected_value_read_out_by_hand():
    assert expected_classes(torch.zeros(N_CLASSES)).item() == pytest.approx(5.0)
    two_and_ten = torch.full((N_CLASSES,), -math.inf)
    two_and_ten[2] = two_and_ten[10] = math.log(0.5)
    assert expected_classes(two_and_ten).item() == pytest.approx(6.0)
    skewed = torch.log(torch.tensor([0.7, 0.2, 0.1] + [1e-12] * 8))
    assert expected_classes(skewed).item() == pytest.approx(0.2 + 0.2, abs=1e-6)


def exemplars_of(tok, n=5):
    feature = planted_features(tok, [RULES["comma"]], window=16, n_top=6, n_random=6, max_windows=300)[0]
    return feature.select(split="score")[:n]


def test_simulate_reads_the_class_logits_at_each_tokens_own_position(tiny):
    """Reference: one plain full forward per exemplar (the training path's view), class logits at the
    text positions, expected value, max over each subject token's simulator tokens."""
    model, tok = tiny
    fmt = SimulatorFormat.for_tokenizer(tok)
    exemplars = exemplars_of(tok)
    fast = FinetunedSimulator(model, tok, fmt, batch_size=2).simulate("commas", exemplars)
    full = FinetunedSimulator(model, tok, fmt, mode="full").simulate("commas", exemplars)
    collated = SimulatorCollator(tok)(
        [{"explanation": "commas", "tokens": e.tokens, "classes": [0] * len(e.tokens)} for e in exemplars]
    )
    with torch.inference_mode():
        logits = model(input_ids=collated["input_ids"], attention_mask=collated["attention_mask"]).logits
    n_prefix = len(prefix_ids(tok, "commas"))
    for row, (e, a, b) in enumerate(zip(exemplars, fast, full)):
        enc = encode_text(tok, e.tokens)
        ev = expected_classes(logits[row, n_prefix : n_prefix + len(enc.ids)][:, list(fmt.class_token_ids)]).tolist()
        reference = align_max(ev, enc.spans, enc.subject, nearest_fallback=True)
        assert len(a.predicted) == len(e.tokens) and a.true_activations == e.activations
        assert max(abs(x - y) for x, y in zip(a.predicted, reference)) < 1e-4
        assert max(abs(x - y) for x, y in zip(b.predicted, reference)) < 1e-4
    other = FinetunedSimulator(model, tok, fmt).simulate("numbers in tables of data", exemplars)
    assert max(abs(x - y) for s, o in zip(fast, other) for x, y in zip(s.predicted, o.predicted)) > 1e-6


def test_simulate_many_batches_headers_and_agrees_with_one_at_a_time(tiny):
    """k explanations of different lengths (left-padded headers) over the same exemplars, in one call,
    give what k separate `simulate` calls give."""
    model, tok = tiny
    fmt = SimulatorFormat.for_tokenizer(tok)
    exemplars = exemplars_of(tok)
    texts = ["commas", "numbers in tables of data and their units", "x"]
    sim = FinetunedSimulator(model, tok, fmt, batch_size=2)
    many = sim.simulate_many(texts, exemplars)
    for text, got in zip(texts, many):
        want = sim.simulate(text, exemplars)
        assert [s.window_id for s in got] == [e.window_id for e in exemplars]
        assert max(abs(x - y) for a, b in zip(got, want) for x, y in zip(a.predicted, b.predicted)) < 1e-4
    assert max(abs(x - y) for a, b in zip(many[0], many[1]) for x, y in zip(a.predicted, b.predicted)) > 1e-6


def test_predictions_map_back_to_subject_tokens_of_another_tokenizer(tiny, smol_tok):
    """Exemplars tokenised by SmolLM2 (the subject), simulated by the tiny Llama (512-token BPE)."""
    model, tok = tiny
    sim = FinetunedSimulator(model, tok, SimulatorFormat.for_tokenizer(tok))
    exemplars = exemplars_of(smol_tok, 3)
    sims = sim.simulate("commas", exemplars)
    for e, s in zip(exemplars, sims):
        enc = encode_text(tok, e.tokens)
        ev = expected_classes(sim.class_logits("commas", [enc])[0]).tolist()
        chars = [-math.inf] * len("".join(e.tokens))  # each character: the max prediction of its simulator tokens
        for (st, en), v in zip(enc.spans, ev):
            for c in range(st, en):
                chars[c] = max(chars[c], v)
        start = 0
        for tok_text, p in zip(e.tokens, s.predicted):
            assert p == pytest.approx(max(chars[start : start + len(tok_text)]), abs=1e-6)
            start += len(tok_text)


def test_simulator_refuses_explain_split_and_handles_empty_text(tiny):
    model, tok = tiny
    sim = FinetunedSimulator(model, tok, SimulatorFormat.for_tokenizer(tok))
    with pytest.raises(ValueError, match="explain-split"):
        sim.simulate("x", [Exemplar(("a",), (1.0,), 1, split="explain")])
    out = sim.simulate(
        "x", [Exemplar(("", ""), (0.0, 1.0), 2, split="score"), Exemplar(("a", "b"), (0.0, 1.0), 3, split="score")]
    )
    assert out[0].predicted == (0.0, 0.0) and len(out[1].predicted) == 2


def test_simulator_json_round_trip_and_clear_errors(tiny_tok, tmp_path):
    fmt = SimulatorFormat.for_tokenizer(tiny_tok, base_model="tiny")
    write_simulator_file(tmp_path, fmt)
    assert read_simulator_file(tmp_path) == fmt
    fmt.check_tokenizer(tiny_tok, str(tmp_path))
    import dataclasses

    swapped = dataclasses.replace(fmt, class_tokens=tuple(reversed(fmt.class_tokens)))
    with pytest.raises(ValueError, match=r"simulator\.json: field class_tokens"):
        swapped.check_tokenizer(tiny_tok, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="simulator.json: missing"):
        read_simulator_file(tmp_path / "nowhere")
    (tmp_path / "simulator.json").write_text((tmp_path / "simulator.json").read_text().replace("## Input", "## In"))
    with pytest.raises(ValueError, match="header_template"):
        read_simulator_file(tmp_path)
