"""Sampling protocols: interval sampling, other-context and out-of-context exemplars, per-split counts,
the explainer prompt and the pooled score of the anthropic preset; the default preset unchanged."""

from __future__ import annotations

import collections
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuroscribe import scoring
from neuroscribe.configs import CollectConfig, MiningConfig
from neuroscribe.corpus import context_prefix, neutral_context
from neuroscribe.distill.collect import collect
from neuroscribe.distill.collect.intervals import FINE
from neuroscribe.distill.collect.mining import Miner
from neuroscribe.distill.collect.splits import assign_splits
from neuroscribe.features import ActivationReader, parse_feature_spec
from neuroscribe.models import load_model
from neuroscribe.prompts import MAX_DIGIT, display_tokens, explainer_messages
from neuroscribe.records import Explanation, FeatureId, SimulatedExemplar
from neuroscribe.runs.store import ExemplarStore
from neuroscribe.scorers import simulate_and_score, target_values


def test_the_default_preset_keeps_the_counts_collect_always_had():
    m = MiningConfig()
    assert (m.protocol, m.top_k, m.quantiles, m.per_quantile, m.random_k, m.inactive_k, m.hard_negatives) == (
        "transluce",
        30,
        5,
        3,
        45,
        15,
        6,
    )
    assert (m.intervals, m.per_interval, m.other_context, m.out_of_context) == (0, 0, 0, 0)
    a = MiningConfig(protocol="anthropic")  # 10 + 6 x 2 top, 2 x 3 per interval, 5 + 10 x 2 random, ...
    assert (a.top_k, a.intervals, a.per_interval, a.random_k, a.other_context, a.out_of_context) == (
        22,
        12,
        6,
        25,
        10,
        40,
    )
    assert MiningConfig(protocol="anthropic", top_k=50).protocol == "anthropic+custom"
    with pytest.raises(ValueError, match="sampling protocol 'delphi'"):
        MiningConfig(protocol="delphi")


def _stream(seed: int, n_windows: int, F: int, T: int):
    """Synthetic activations with heavy tails and features of very different scales."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-2, 2, F)
    acts = torch.randn(n_windows, T, F, generator=g).clamp(min=0) ** 3 * scale
    acts[torch.rand(n_windows, 1, F, generator=g).expand(-1, T, -1) < 0.3] = 0.0  # quiet windows
    tokens = [tuple(torch.randint(0, 50, (T,), generator=g).tolist()) for _ in range(n_windows)]
    return acts, tokens


def _miner(F: int, T: int) -> Miner:
    cfg = MiningConfig(protocol="anthropic", intervals=4, per_interval=2, top_k=3, random_k=2)
    return Miner([FeatureId("mlp", 0, i) for i in range(F)], T, cfg)


def _mined(seed: int, F: int = 5, T: int = 6, N: int = 240) -> tuple[Miner, torch.Tensor, list]:
    """A miner fed one synthetic stream in batches of 16, with the stream."""
    acts, tokens = _stream(seed, N, F, T)
    m = _miner(F, T)
    for i in range(0, N, 16):
        m.update(acts[i : i + 16], list(range(i, i + 16)), tokens[i : i + 16])
    return m, acts, tokens


def _entries(m: Miner) -> set[tuple[int, int, float]]:
    """(fine-bin row, window id, window max) of every kept interval sample."""
    s = m.interval.slots
    return {(r, int(s.ids[r, c]), float(s.maxes[r, c])) for r, c in (s.ids >= 0).nonzero().tolist()}


def test_interval_samples_do_not_depend_on_read_order_batches_or_ranks():
    F, T, N = 5, 6, 240
    one, acts, tokens = _mined(0, F, T, N)
    # two ranks, reversed order, other batch sizes, merged
    a, b = _miner(F, T), _miner(F, T)
    for lo, hi, m, step in ((120, N, a, 7), (0, 120, b, 5)):
        for i in reversed(range(lo, hi, step)):
            j = min(i + step, hi)
            m.update(acts[i:j], list(range(i, j)), tokens[i:j])
    a.absorb(b)
    assert torch.equal(one.interval.scale, a.interval.scale)
    assert _entries(one) == _entries(a) and len(_entries(one)) > 20
    # and each fine bin holds exactly the lowest-priority windows of that bin at the final scale
    peak = acts.amax(1)  # [N, F]
    from neuroscribe.distill.collect.mining import window_priorities

    prio = window_priorities(0, list(range(N)), F)[0]  # [F, N] the interval stream
    bins = FINE * 4
    for f in range(F):
        scale = float(one.interval.scale[f])
        assert scale >= float(peak[:, f].max()) > scale / 2
        for b in range(bins):
            inside = [w for w in range(N) if peak[w, f] > 0 and min(int(peak[w, f] * bins / scale), bins - 1) == b]
            want = sorted(inside, key=lambda w: (float(prio[f, w]), w))[:2]
            held = one.interval.slots.ids[f * bins + b]
            assert sorted(int(w) for w in held if w >= 0) == sorted(want)


def test_interval_picks_lie_in_equal_width_intervals_of_the_max():
    F, N = 5, 240
    m, acts, _ = _mined(1, F, 6, N)
    fmax = m.top.keys.max(1).values.float()
    top_ids = torch.where(m.top.keys > 0, m.top.ids, torch.full_like(m.top.ids, -2))
    feature, row, slot, interval = m.interval.pick(fmax, top_ids, 2)
    peak = acts.amax(1)
    seen = collections.Counter()
    for f, r, s, j in zip(feature.tolist(), row.tolist(), slot.tolist(), interval.tolist()):
        w = int(m.interval.slots.ids[r, s])
        M = float(fmax[f])
        assert j * M / 4 < float(peak[w, f]) <= (j + 1) * M / 4 + 1e-6
        assert w not in top_ids[f].tolist()
        seen[(f, j)] += 1
    assert max(seen.values()) <= 2
    for f in range(F):  # an interval with at least 2 non-top windows in a whole fine bin gets 2
        M = float(fmax[f])
        for j in range(4):
            members = [w for w in range(N) if j * M / 4 < peak[w, f] <= (j + 1) * M / 4 and w not in top_ids[f]]
            if len(members) >= 8:
                assert seen[(f, j)] == 2, (f, j, len(members))


def test_a_source_a_protocol_keeps_out_of_a_split_never_lands_there():
    n = 60
    col = np.zeros(n, np.int64)
    source = np.array([0] * 30 + [1] * 30)  # 0: every split evenly; 1: explain only
    weights = np.array([[1 / 3, 1.0], [1 / 3, 0.0], [1 / 3, 0.0]])
    split = assign_splits(col, np.arange(n), np.arange(n), np.arange(n), source, 3, weights)
    assert set(split[source == 1]) == {0}
    assert collections.Counter(split[source == 0].tolist()) == {0: 10, 1: 10, 2: 10}
    # groups of one row of each: the explain-only row is left out (-1) wherever its group is not in explain
    doc = np.repeat(np.arange(30), 2)
    split = assign_splits(col, doc, doc, np.arange(n), np.tile([0, 1], 30), 3, weights)
    pairs = split.reshape(30, 2)
    assert all(8 <= c <= 12 for c in collections.Counter(pairs[:, 0].tolist()).values())
    assert ((pairs[:, 1] == 0) == (pairs[:, 0] == 0)).all() and set(pairs[:, 1]) == {0, -1}


@pytest.fixture(scope="module")
def anthropic_store(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("anthropic") / "store"
    cfg = CollectConfig(
        out=str(out),
        model=str(tiny_llama),
        features=("mlp:1:0-5",),
        window=16,
        max_windows=192,
        batch_size=16,
        mining=MiningConfig(protocol="anthropic", out_of_context=10),
        progress=False,
    )
    return ExemplarStore(collect(cfg)), cfg


def test_anthropic_store_deals_each_source_to_its_splits(anthropic_store):
    store, _ = anthropic_store
    assert store.protocol == "anthropic+custom" and store.summary()["protocol"] == store.protocol
    total = collections.Counter()
    for key in store.keys():  # noqa: SIM118 (a store, not a dict)
        r = store.get(key)
        counts = collections.Counter((e.split, e.source) for e in r.exemplars)
        total.update(counts)
        assert counts[("explain", "out_of_context")] == 0  # out-of-context tokens are scoring only
        assert counts[("score", "other_context")] == counts[("test", "other_context")] == 0
        assert counts[("explain", "other_context")] <= 10
        ooc = [e for e in r.exemplars if e.source == "out_of_context"]
        assert ooc and all(len(e.tokens) == 1 and e.window_id == -1 - e.token_ids[0] for e in ooc)
        tops = {e.window_id for e in r.select(sources=["top"])}
        for e in r.select(sources=["other_context"]):  # a top token of the feature, in a window not among the top
            assert e.window_id not in tops and set(e.tokens) & set(r.top_tokens[:3])
        for e in r.select(sources=["interval"]):
            assert e.quantile * r.max_activation / 12 < e.max_activation <= (e.quantile + 1) * r.max_activation / 12
    # per feature on average, the preset's proportions: random 5 : 10 : 10, top 10 : 6 : 6 (groups of
    # windows sharing a document move whole, so single features deviate)
    mean = {k: v / len(store.keys()) for k, v in total.items()}
    assert mean[("explain", "random")] < 7 < mean[("score", "random")] and mean[("test", "random")] > 7
    assert mean[("explain", "top")] > max(mean[("score", "top")], mean[("test", "top")]) - 1


def test_out_of_context_rows_hold_each_tokens_own_activation_read_after_a_neutral_context(anthropic_store):
    store, cfg = anthropic_store
    model, tok = load_model(cfg.model)
    groups = parse_feature_spec(cfg.features, model)
    prefix = context_prefix(tok) + neutral_context(tok, cfg.context)  # never the bare sink position
    assert store.meta["out_of_context_context_ids"] == neutral_context(tok, cfg.context) != []
    with ActivationReader(model, groups) as reader:
        columns = {f.key: i for i, f in enumerate(reader.features)}
        for key in store.keys()[:3]:
            r = store.get(key)
            ooc = sorted(r.select(sources=["out_of_context"]), key=lambda e: e.rank)
            alone = reader.read(torch.tensor([prefix + [e.token_ids[0]] for e in ooc]))[:, -1, columns[key]]
            assert torch.allclose(alone, torch.tensor([e.activations[0] for e in ooc]), atol=1e-5)
            # ranked by the highest activation each token reaches in the feature's top windows
            best = {}
            for e in r.select(sources=["top"]):
                for t, a in zip(e.token_ids, e.activations):
                    best[t] = max(best.get(t, -np.inf), a)
            reach = [best[e.token_ids[0]] for e in ooc]
            assert reach == sorted(reach, reverse=True) and min(reach) > 0


def test_anthropic_prompt_shows_the_explain_split_and_the_score_pools_every_scored_exemplar(anthropic_store):
    store, _ = anthropic_store
    r = store.get(store.keys()[0])
    shown = [e for e in r.select(split="explain") if e.source in ("top", "interval", "random", "other_context")]
    content = explainer_messages(r, "highlighted")[1]["content"]
    assert len(shown) > 20 and content.count("\n") - content.count("\n\n") >= len(shown)  # no cap at 20
    assert f"{len(shown)}. " in content and f"{len(shown) + 1}. " not in content

    class Ideal:  # predicts the truth on top/interval/random windows, a constant on out-of-context tokens
        spec = "ideal-but-for-tokens-alone"

        def simulate(self, text, exemplars):
            return [
                SimulatedExemplar(
                    e.window_id,
                    e.source,
                    e.activations,
                    (0.5,) if e.source == "out_of_context" else tuple(target_values(e.activations, "relu")),
                )
                for e in exemplars
            ]

    scored = simulate_and_score(Ideal(), Explanation(r.feature.key, "x", "test"), r, "test")
    held = r.select(split="test")
    scored_rows = [e for e in held if e.source in ("top", "interval", "random", "out_of_context")]
    assert scored.sampling == "anthropic+custom" and scored.n_exemplars == len(scored_rows)
    order = {(s.window_id, s.source) for s in scored.simulations}
    assert order == {(e.window_id, e.source) for e in scored_rows}
    windows = [e for e in scored_rows if e.source != "out_of_context"]
    true = [target_values(e.activations, "relu") for e in windows]
    assert scored.score == pytest.approx(scoring.pooled_correlation(true, true), abs=1e-9) == pytest.approx(1.0)
    # the out-of-context tokens are a part of their own: a constant there is undefined, not a diluted 1.0
    alone = r.select(split="test", sources=["out_of_context"])
    assert math.isnan(scored.out_of_context_score) and scored.n_out_of_context == len(alone) > 0


def test_out_of_context_tokens_are_scored_as_a_part_of_their_own(anthropic_store):
    store, _ = anthropic_store
    r = store.get(store.keys()[0])

    class RightAloneWrongInWindows:  # the truth on out-of-context tokens, its negation on windows
        spec = "alone-only"

        def simulate(self, text, exemplars):
            return [
                SimulatedExemplar(
                    e.window_id,
                    e.source,
                    e.activations,
                    tuple(
                        (1 if e.source == "out_of_context" else -1) * v for v in target_values(e.activations, "relu")
                    ),
                )
                for e in exemplars
            ]

    scored = simulate_and_score(RightAloneWrongInWindows(), Explanation(r.feature.key, "x", "test"), r, "test")
    alone = [target_values(e.activations, "relu") for e in r.select(split="test", sources=["out_of_context"])]
    if len({v for a in alone for v in a}) > 1:
        assert scored.out_of_context_score == pytest.approx(1.0)
    assert scored.score == pytest.approx(-1.0)  # the windows alone (pooled, the right tokens lifted it a little)


def test_collect_protocol_from_the_command_line(tiny_llama, tmp_path):
    out = tmp_path / "store"
    run = subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", "collect", "--model", str(tiny_llama), "--features", "mlp:0:0-3",
         "--window", "16", "--max-windows", "96", "--protocol", "anthropic", "--out", str(out), "--no-progress"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    store = ExemplarStore(out)
    assert store.protocol == "anthropic" and store.meta["mining"]["out_of_context"] == 40
    bad = subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", "collect", "--model", str(tiny_llama), "--protocol", "nope",
         "--out", str(tmp_path / "other")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "sampling protocol 'nope'" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_explain_on_an_anthropic_store_records_the_protocol_of_every_score(anthropic_store, tiny_llama, tmp_path):
    import json

    from neuroscribe.configs import ExplainConfig
    from neuroscribe.distill.explain import explain

    store, _ = anthropic_store
    keys = tuple(store.keys()[:2])
    spec = f"hf:{tiny_llama}"
    out = tmp_path / "explain"
    explain(ExplainConfig(str(store.path), str(out), teacher=spec, simulator=spec, k=2, max_tokens=8, features=keys,
                          progress=False))  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sampling"] == store.protocol
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert {r["explanation"]["feature"] for r in rows} == set(keys)
    assert {r["explanation"]["prompt_style"] for r in rows} == {"graded"}  # the protocol's, not binary marks
    for r in rows:
        record = store.get(r["explanation"]["feature"])
        held = [e for e in record.select(split="score") if e.source in ("top", "interval", "random", "out_of_context")]
        assert r["sampling"] == store.protocol
        if r["status"] == "ok":
            assert r["n_exemplars"] == len(held)


def test_the_graded_style_shows_each_active_tokens_digit_in_running_text(anthropic_store):
    store, _ = anthropic_store
    r = store.get(store.keys()[0])
    graded = explainer_messages(r, "graded")[1]["content"]
    plain = explainer_messages(r, "plain")[1]["content"]
    peak = max((e for e in r.select(split="explain", sources=["top"])), key=lambda e: e.max_activation)
    i = max(range(len(peak.tokens)), key=lambda j: peak.activations[j])
    assert f"={MAX_DIGIT}>>" in graded and "=0>>" not in graded
    assert len(graded) < len(plain)  # running text, not a line per token
    assert display_tokens([peak.tokens[i]], markup_safe=True)[0] in graded
