"""The conventions that make a score trustworthy, each checked where it is made: what collect keeps and
how it splits it, what a token's text is, which exemplars are too few to score, which features a
fine-tuned simulator may not grade, that a changed protocol never reuses a cached score, and that
distill splits by unit. Real tiny models and files throughout."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import build_sentencepiece_tokenizer

from neuroscribe.configs import CollectConfig, MiningConfig
from neuroscribe.distill.collect import collect
from neuroscribe.distill.collect.finalize import TokenText
from neuroscribe.records import Exemplar, Explanation, FeatureExemplars, FeatureId, FeatureStats
from neuroscribe.runs.store import ExemplarStore

SMALL = MiningConfig(
    top_k=6,
    pool=16,
    quantiles=3,
    per_quantile=1,
    random_k=6,
    inactive_k=2,
    inactive_pool=6,
    hard_negatives=2,
    negative_ratio=0.3,
)


def _collect(model, out, **kw):
    base = dict(
        out=str(out),
        model=str(model),
        features=("mlp:0-1:0-7",),
        window=12,
        max_windows=96,
        batch_size=8,
        shard_windows=32,
        mining=SMALL,
        progress=False,
    )
    return ExemplarStore(collect(CollectConfig(**{**base, **kw})))


# --------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def repeated_store(tiny_llama, tmp_path_factory):
    """A corpus where paragraphs repeat word for word (duplicated text) and long documents span windows."""
    rng = random.Random(0)
    paragraphs = [
        " ".join(
            rng.choice(["alpha", "beta", "gamma", "delta", "(x)", "42", "the", "of"]) for _ in range(rng.randint(4, 30))
        )
        for _ in range(12)
    ]
    docs = [rng.choice(paragraphs) for _ in range(160)]
    data = tmp_path_factory.mktemp("rep") / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return _collect(tiny_llama, tmp_path_factory.mktemp("rep") / "store", dataset=str(data), max_windows=160)


def test_neighbouring_and_identical_windows_always_share_a_split(repeated_store):
    checked_docs = checked_dupes = 0
    for rec in repeated_store.features():
        ex = rec.exemplars
        for i, a in enumerate(ex):
            assert a.doc_span[0] <= a.doc_span[1]
            for b in ex[i + 1 :]:
                if a.doc_span[0] <= b.doc_span[1] and b.doc_span[0] <= a.doc_span[1]:
                    assert a.split == b.split, (rec.feature.key, a.window_id, b.window_id)
                    checked_docs += 1
                if a.token_ids == b.token_ids:
                    assert a.split == b.split, (rec.feature.key, a.window_id, b.window_id)
                    checked_dupes += a.window_id != b.window_id
    assert checked_docs and checked_dupes, "the corpus must exercise both rules"


def test_random_windows_that_are_also_top_windows_are_kept_in_one_split(tiny_llama, tmp_path):
    # 16 windows, 8 top and 8 random per feature: the two sources must overlap, and keep the overlap
    mining = MiningConfig(
        top_k=8, pool=8, quantiles=2, per_quantile=1, random_k=8, inactive_k=0, inactive_pool=0, hard_negatives=0
    )
    st = _collect(tiny_llama, tmp_path / "s", max_windows=16, mining=mining, features=("mlp:0:0-3",))
    shared = 0
    for rec in st.features():
        random_rows = rec.select(sources=["random"])
        assert len(random_rows) == 8  # the random sample is whole: windows already in top are not dropped
        top = {e.window_id: e.split for e in rec.select(sources=["top"])}
        for e in random_rows:
            if e.window_id in top:
                assert e.split == top[e.window_id]
                shared += 1
    assert shared


def test_inactive_exemplars_are_real_non_activating_text_and_counted(store_small):
    for rec in store_small.features():
        for e in rec.select(sources=["inactive"]):
            assert max(e.activations) <= 0.1 * rec.stats.max_activation + 1e-6
    summary = store_small.summary()
    assert set(summary["insufficient"]) == {"score", "test"}
    for split, missing in summary["insufficient"].items():
        for key, reason in missing.items():
            held = store_small.get(key).select(split=split)
            assert reason.startswith("insufficient") and (
                not [e for e in held if e.source in ("top", "quantile")]
                or not [e for e in held if e.source == "random"]
            )


@pytest.fixture(scope="module")
def store_small(tiny_llama, tmp_path_factory):
    return _collect(tiny_llama, tmp_path_factory.mktemp("small") / "store")


def test_default_mining_gives_balanced_held_out_splits_and_records_the_counts(tiny_llama, tmp_path):
    from test_eval import QuotedWordSimulator

    from neuroscribe.records import Explanation
    from neuroscribe.scorers import simulate_and_score

    st = _collect(tiny_llama, tmp_path / "s", features=("mlp:0:0-5",), max_windows=300, mining=MiningConfig())
    used = []
    for rec in st.features():
        scored = simulate_and_score(
            QuotedWordSimulator(), Explanation(rec.feature.key, 'the word "of"', "t"), rec, "test"
        )
        assert scored.n_top == scored.n_random == min(scored.n_top_held, scored.n_random_held)  # recorded, 1:1
        used.append((scored.n_top + scored.n_random) / (scored.n_top_held + scored.n_random_held))
    # documents keep their windows together, so a split cannot always be exactly 1:1; nearly all is used
    assert sum(used) / len(used) >= 0.9 and min(used) >= 0.7, used
    res = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "neuroscribe.cli", "inspect", str(st.path)], capture_output=True, text=True
    )
    assert "too few held-out exemplars to score (insufficient): score " in res.stdout


# --------------------------------------------------------------------------- token text


def test_token_text_keeps_word_spaces_of_sentencepiece_tokenizers(tmp_path):
    tok = build_sentencepiece_tokenizer(tmp_path)
    text = "The café says ☃ to the object of a class"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    lone = [tok.decode([i]) for i in ids]
    assert "the" in lone and " the" not in lone, "the decoder strips a lone piece's word space (the old bug)"
    pieces = TokenText(tok)(ids)
    assert "".join(pieces) == " " + text  # mid-stream, the first word keeps its space too
    assert " the" in pieces and " object" in pieces
    assert "\ufffd" not in "".join(pieces) and "☃" in pieces  # a byte-split character goes whole to one token


def test_token_text_of_a_byte_level_tokenizer_is_unchanged(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    text = "The value of an expression is returned."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert list(TokenText(tok)(ids)) == [tok.decode([i]) for i in ids]
    assert "".join(TokenText(tok)(ids)) == text


# --------------------------------------------------------------------------- the attention sink


@pytest.mark.slow
def test_top_exemplars_of_the_bundled_model_peak_at_position_0_at_chance(tmp_path):
    """Measured in the corpus module: without preceding context SmolLM2's position 0 never peaks."""
    st = _collect(
        "smollm2-135m-instruct",
        tmp_path / "s",
        features=("mlp:4;mlp:12",),
        window=32,
        max_windows=96,
        batch_size=16,
        shard_windows=96,
        dtype="bfloat16",
        mining=MiningConfig(
            top_k=8, pool=8, quantiles=2, per_quantile=1, random_k=2, inactive_k=0, inactive_pool=0, hard_negatives=0
        ),
    )
    peaks = [
        max(range(32), key=e.activations.__getitem__) for rec in st.features() for e in rec.select(sources=["top"])
    ]
    at_zero = sum(p == 0 for p in peaks) / len(peaks)
    assert len(peaks) > 10_000
    assert 1 / 32 / 2 < at_zero < 2 / 32, at_zero  # neither avoided nor favoured: within 2x of chance


# --------------------------------------------------------------------------- hard negatives' memory


def test_hard_negative_candidates_stay_bounded_as_the_corpus_grows(tiny_llama):
    """Hard negatives are found in the mining pass: their candidates are slots like any other, so a corpus
    ten times larger keeps the same state, and every kept one satisfies the rule against the final max."""
    from neuroscribe.corpus import iter_documents, iter_windows
    from neuroscribe.distill.collect.mining import HARD_CANDIDATES, Miner
    from neuroscribe.distill.collect.negatives import top_token_slots
    from neuroscribe.features import ActivationReader, parse_feature_spec
    from neuroscribe.models import load_model

    model, tok = load_model(str(tiny_llama))
    groups = parse_feature_spec("mlp:0:0-7", model)
    sizes, kept = [], []
    with ActivationReader(model, groups) as reader:
        for n in (40, 400):
            miner = Miner(reader.features, 12, SMALL)
            ws = list(iter_windows(tok, iter_documents(), 12, n))
            for i in range(0, n, 20):
                b = ws[i : i + 20]
                acts = reader.read(torch.tensor([list(w.token_ids) for w in b]))
                miner.update(acts, [w.window_id for w in b], [w.token_ids for w in b])
            miner.prune_tokens()
            sizes.append((miner.hard.ids.shape, len(miner.window_tokens)))
            ids = np.array(sorted(miner.window_tokens))
            col, slot = top_token_slots(miner, ids, np.array([miner.window_tokens[int(w)] for w in ids]))
            fmax = miner.top.keys.max(1).values
            assert all(miner.hard.maxes[c, s] <= SMALL.negative_ratio * fmax[c] for c, s in zip(col, slot))
            kept.append(len(col))
    assert sizes[0][0] == sizes[1][0] == (len(miner.features), HARD_CANDIDATES * SMALL.hard_negatives)
    slots = sum(s.k for s in miner.slots())
    assert sizes[1][1] <= len(miner.features) * slots
    assert kept[1] > 0 and kept[1] <= len(miner.features) * SMALL.hard_negatives


# --------------------------------------------------------------------------- in-sample simulators


def _simulator_folder(tiny_llama, tmp_path, trained: tuple[str, ...]) -> Path:
    import shutil

    from transformers import AutoTokenizer

    from neuroscribe.runs.simulator import write_simulator_file
    from neuroscribe.simulators.finetuned_format import SimulatorFormat

    folder = tmp_path / "simulator"
    shutil.copytree(tiny_llama, folder)
    fmt = SimulatorFormat.for_tokenizer(AutoTokenizer.from_pretrained(str(folder)), "tiny")
    write_simulator_file(
        folder,
        SimulatorFormat(
            **{**fmt.__dict__, "trained_features": trained, "trained_splits": ("explain", "score", "test")}
        ),
    )
    return folder


def test_a_fine_tuned_simulator_never_grades_what_it_was_trained_on_unmarked(store_small, tiny_llama, tmp_path):
    from neuroscribe.configs import ScoreConfig
    from neuroscribe.distill.score import score

    keys = store_small.keys()
    folder = _simulator_folder(tiny_llama, tmp_path, tuple(keys[:2]))
    expl = tmp_path / "e.jsonl"
    expl.write_text("".join(json.dumps({"feature": k, "explanation": "the letter a"}) + "\n" for k in keys[:3]))
    cfg = dict(explanations=str(expl), store=str(store_small.path), simulator=f"finetuned:{folder}", progress=False)
    with pytest.raises(ValueError, match=r"was trained on 2 of these features .* in-sample"):
        score(ScoreConfig(out=str(tmp_path / "a"), **cfg))
    marked = score(ScoreConfig(out=str(tmp_path / "b"), allow_in_sample=True, **cfg))
    assert [s.in_sample for s in marked] == [True, True, False]
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["n_in_sample"] == 2


# --------------------------------------------------------------------------- cache keys


def test_a_changed_protocol_or_target_never_reuses_a_cached_score(tiny_llama, tmp_path, monkeypatch):
    from neuroscribe import scorers
    from neuroscribe.cache import Cache
    from neuroscribe.models import load_model
    from neuroscribe.simulators.allatonce import LocalSimulator

    sim = LocalSimulator(*load_model(str(tiny_llama)), spec="hf:tiny")
    rng = random.Random(1)
    ex = [
        Exemplar(
            tuple(rng.choice(["a", " b", " c"]) for _ in range(6)),
            tuple(rng.uniform(-1, 2) for _ in range(6)),
            i,
            source="top" if i % 2 else "random",
            split="score",
            rank=i // 2,
        )
        for i in range(6)
    ]
    record = FeatureExemplars(FeatureId("mlp", 0, 1), tuple(ex), FeatureStats(max_activation=2.0))
    e = Explanation(record.feature.key, "the letter b", "test")
    with Cache(tmp_path / "c.sqlite") as cache:
        first = scorers.cached_score(sim, e, record, "score", cache)
        assert scorers.cached_score(sim, e, record, "score", cache).score == first.score
        assert cache.usage().calls == 1 and cache.usage().cached_hits == 1
        raw = scorers.cached_score(sim, e, record, "score", cache, target="raw")
        assert cache.usage().calls == 2 and raw.target == "raw"
        monkeypatch.setattr(scorers, "SCORING_VERSION", "sim-test-next")
        again = scorers.cached_score(sim, e, record, "score", cache)
        assert cache.usage().calls == 3 and again.protocol == "sim-test-next"
        assert math.isclose(
            again.score, first.score, rel_tol=1e-4
        )  # recomputed (the shared prefix KV may differ in the last bits)


# --------------------------------------------------------------------------- distill splits by unit


def test_both_polarities_of_a_unit_land_on_one_side():
    from neuroscribe.distill.datasets import split_features

    keys = [f"mlp/L{i % 4}/{i}{s}" for i in range(120) for s in "+-"]
    s = split_features(keys, 0.2, 0.1, seed=5)
    side = {k: "train" if k in s.train else "validation" if k in s.validation else "heldout" for k in keys}
    for i in range(120):
        assert side[f"mlp/L{i % 4}/{i}+"] == side[f"mlp/L{i % 4}/{i}-"]
    fixed = split_features(keys, 0.2, 0.1, heldout=["mlp/L1/1+"])
    assert {"mlp/L1/1+", "mlp/L1/1-"} <= set(fixed.heldout) and "mlp/L1/1-" not in fixed.train
