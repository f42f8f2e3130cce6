"""collect: hooks, mining, splits, store, resume, bad input — on tiny random models built offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from neuroscribe.corpus import context_prefix, iter_documents, iter_windows
from neuroscribe.distill.collect import CollectConfig, EmptyDatasetError, collect
from neuroscribe.distill.collect.mining import Miner, MiningConfig
from neuroscribe.features import ActivationReader, FeatureSpecError, parse_feature_spec
from neuroscribe.models import load_model
from neuroscribe.records import ACTIVE_FRACTION
from neuroscribe.runs.store import ExemplarStore

SMALL = MiningConfig(top_k=6, pool=16, quantiles=3, per_quantile=1, random_k=4, hard_negatives=2, negative_ratio=0.3)


def _cfg(model, out, **kw) -> CollectConfig:
    base = dict(
        out=str(out),
        model=str(model),
        features=("mlp:0-1:0-7",),
        window=16,
        max_windows=96,
        batch_size=8,
        shard_windows=32,
        mining=SMALL,
        progress=False,
    )
    base.update(kw)
    return CollectConfig(**base)


@pytest.fixture(scope="module")
def store(tiny_llama, tmp_path_factory):
    return ExemplarStore(collect(_cfg(tiny_llama, tmp_path_factory.mktemp("c") / "store")))


def _copy_tokenizer(src, dst) -> None:
    for f in Path(src).iterdir():
        if f.name.startswith(("tok", "special", "chat")):
            (Path(dst) / f.name).write_bytes(f.read_bytes())


def _all_window_acts(model_dir, spec, n_windows=96, window=16):
    """Brute force: every window's activations for every feature, no mining."""
    model, tok = load_model(str(model_dir))
    groups = parse_feature_spec(spec, model)
    windows = list(iter_windows(tok, iter_documents(), window, n_windows, context=4))
    prefix = context_prefix(tok)
    with ActivationReader(model, groups) as reader:
        ids = torch.tensor([prefix + list(w.context) + list(w.token_ids) for w in windows])
        acts = torch.cat([reader.read(ids[i : i + 8]) for i in range(0, len(ids), 8)])[:, len(prefix) + 4 :]
        return reader.features, windows, acts


def test_top_windows_match_brute_force(store, tiny_llama):
    features, windows, acts = _all_window_acts(tiny_llama, "mlp:0-1:0-7")
    maxes = acts.amax(dim=1)  # [W, F]
    for col, fid in enumerate(features):
        rec = store.get(fid.key)
        top = sorted(rec.select(sources=["top"]), key=lambda e: e.rank)
        order = sorted(range(len(windows)), key=lambda w: (-float(maxes[w, col]), w))
        expected = [w for w in order if maxes[w, col] > 0][: SMALL.top_k]
        assert [e.window_id for e in top] == expected
        for e in top:
            assert torch.allclose(torch.tensor(e.activations), acts[e.window_id, :, col], atol=1e-6)


def test_hook_reads_the_input_of_down_proj(tiny_llama):
    model, tok = load_model(str(tiny_llama))
    mlp = model.model.layers[1].mlp
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    with ActivationReader(model, parse_feature_spec("mlp:1:0-3", model), stop_early=False) as reader:
        acts = reader.read(torch.tensor([[5, 6, 7, 8, 9]]))
    handle.remove()
    x = seen["x"]
    expected = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))[..., :4]
    assert [f.key for f in reader.features] == [f"mlp/L1/{i}{s}" for s in "+-" for i in range(4)]
    assert torch.allclose(acts[..., :4], expected, atol=1e-6)
    assert torch.equal(acts[..., 4:], -acts[..., :4])  # negative polarity reads -a


def test_families_each_collect(tmp_path, tiny_tokenizer_dir):
    from builders import build_tiny_model

    for family in ("qwen2", "gemma", "gpt2"):
        path = build_tiny_model(tmp_path / family, family, tokenizer_dir=tiny_tokenizer_dir)
        st = ExemplarStore(collect(_cfg(path, tmp_path / f"{family}-store", features=("mlp:1:0-3",), max_windows=32)))
        live = st.keys()
        assert len(st) == 8 and live, family
        assert all(k.startswith("mlp/L1/") for k in live)


def test_splits_never_share_a_window(store):
    for rec in store.features():
        seen: dict[int, str] = {}
        for e in rec.exemplars:
            assert seen.setdefault(e.window_id, e.split) == e.split, (rec.feature.key, e.window_id)
        splits = {e.split for e in rec.exemplars}
        assert {"explain", "score"} <= splits
        explain = {e.window_id for e in rec.select(split="explain")}
        held_out = {e.window_id for e in rec.exemplars if e.split != "explain"}
        assert not explain & held_out


def test_every_source_follows_its_definition(store, tiny_llama):
    model, tok = load_model(str(tiny_llama))
    sources = set()
    for rec in store.features():
        fmax = rec.stats.max_activation
        assert fmax == pytest.approx(max(e.max_activation for e in rec.exemplars))
        top_ids = {e.window_id for e in rec.select(sources=["top"])}
        for e in rec.exemplars:
            sources.add(e.source)
            assert len(e.tokens) == len(e.activations) == len(e.token_ids) == 16
            if e.source == "quantile":
                assert 0 <= e.quantile < SMALL.quantiles and e.max_activation > 0
            if e.source == "hard_negative":
                assert e.max_activation <= SMALL.negative_ratio * fmax + 1e-6
                top_tok = set(rec.top_tokens[:3])
                assert top_tok & set(e.tokens), "a hard negative contains one of the feature's 3 top tokens"
                assert e.window_id not in top_ids
            if e.source == "inactive":  # real non-activating text, by the one label rule
                assert e.max_activation <= ACTIVE_FRACTION * fmax + 1e-6
        assert len(rec.stats.quantile_boundaries) == SMALL.quantiles
        assert list(rec.stats.quantile_boundaries) == sorted(rec.stats.quantile_boundaries)
        random_ids = [e.window_id for e in rec.select(sources=["random"])]
        assert len(random_ids) == len(set(random_ids)) == SMALL.random_k  # top windows are not dropped from it
    assert sources == {"top", "quantile", "random", "inactive", "hard_negative"}


def test_dead_features_are_recorded(tiny_llama, tmp_path):
    # zero the up projection of layer 0 neuron 3: its activation is exactly 0 everywhere
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3] = 0
    model.save_pretrained(tmp_path / "m")
    _copy_tokenizer(tiny_llama, tmp_path / "m")
    st = ExemplarStore(collect(_cfg(tmp_path / "m", tmp_path / "s", features=("mlp:0:2-3",), max_windows=32)))
    assert st.get("mlp/L0/3+").dead and st.get("mlp/L0/3-").dead
    assert st.get("mlp/L0/3+").exemplars == ()
    assert not st.get("mlp/L0/2+").dead
    assert st.summary()["dead"] == 2


def test_memory_does_not_grow_with_the_corpus(tiny_llama):
    model, tok = load_model(str(tiny_llama))
    groups = parse_feature_spec("mlp:0:0-7", model)
    sizes = []
    for n in (32, 128):
        with ActivationReader(model, groups) as reader:
            miner = Miner(reader.features, 16, SMALL)
            for w0 in range(0, n, 8):
                ws = list(iter_windows(tok, iter_documents(), 16, n))[w0 : w0 + 8]
                acts = reader.read(torch.tensor([list(w.token_ids) for w in ws]))
                miner.update(acts, [w.window_id for w in ws], [w.token_ids for w in ws])
            miner.prune_tokens()
        tensors = [v for s in ("top", "pool", "random", "hard") for v in miner.state()[s].values() if v is not None]
        sizes.append((sum(t.numel() for t in tensors), len(miner.window_tokens)))
    assert sizes[0][0] == sizes[1][0]
    slots = sum(s.k for s in miner.slots())
    assert slots == SMALL.top_k + SMALL.pool + SMALL.random_k + SMALL.inactive_pool + 3 * SMALL.hard_negatives
    bound = len(groups[0].feature_ids()) * slots
    assert sizes[1][1] <= bound


def test_control_tokens_are_escaped(tiny_llama, tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [{"text": f"<|im_start|>user\nhello number {i}<|im_end|><|im_start|>assistant\nfine {i}"} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    st = ExemplarStore(
        collect(_cfg(tiny_llama, tmp_path / "s", dataset=str(data), max_windows=40, features=("mlp:0:0-3",)))
    )
    tokens = [t for rec in st.features() for e in rec.exemplars for t in e.tokens]
    assert tokens and not any("<|im_start|>" in t or "<|im_end|>" in t for t in tokens)
    assert "‹|im_start|›" in tokens


def test_local_dataset_formats(tiny_llama, tmp_path):
    docs = [d for _, d in zip(range(60), iter_documents())]
    (tmp_path / "a.txt").write_text("\n".join(docs))
    import pyarrow as pa

    pq.write_table(pa.table({"body": docs}), tmp_path / "a.parquet")
    t = collect(
        _cfg(tiny_llama, tmp_path / "t", dataset=str(tmp_path / "a.txt"), max_windows=24, features=("mlp:0:0-1",))
    )
    p = collect(
        _cfg(
            tiny_llama,
            tmp_path / "p",
            dataset=str(tmp_path / "a.parquet"),
            text_field="body",
            max_windows=24,
            features=("mlp:0:0-1",),
        )
    )
    assert ExemplarStore(t).meta["windows_seen"] == ExemplarStore(p).meta["windows_seen"] == 24
    with pytest.raises(KeyError, match="no field 'text'"):
        collect(_cfg(tiny_llama, tmp_path / "x", dataset=str(tmp_path / "a.parquet"), features=("mlp:0:0-1",)))


def test_bad_input_errors(tiny_llama, tmp_path):
    model, _ = load_model(str(tiny_llama))
    with pytest.raises(FeatureSpecError, match="layer 7 does not exist"):
        parse_feature_spec("mlp:7", model)
    with pytest.raises(FeatureSpecError, match="out of range"):
        parse_feature_spec("mlp:0:500", model)
    with pytest.raises(FeatureSpecError, match="unknown kind"):
        parse_feature_spec("attn:0", model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect(_cfg(tiny_llama, tmp_path / "s", dataset=str(tmp_path / "missing.jsonl")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises((EmptyDatasetError, ValueError)):
        collect(_cfg(tiny_llama, tmp_path / "s2", dataset=str(tmp_path / "empty.txt")))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "nowhere"))


def test_nan_activations_fail_loudly(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[1, 0] = float("nan")
    model.save_pretrained(tmp_path / "m")
    _copy_tokenizer(tiny_llama, tmp_path / "m")
    with pytest.raises(FloatingPointError, match=r"mlp/L0/1\+"):
        collect(_cfg(tmp_path / "m", tmp_path / "s", features=("mlp:0:0-3",), max_windows=16))
    assert not (tmp_path / "s" / "meta.json").exists()


def test_existing_store_is_not_clobbered(store, tiny_llama):
    before = (store.path / "exemplars.parquet").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        collect(_cfg(tiny_llama, store.path, features=("mlp:0:0",)))
    assert (store.path / "exemplars.parquet").read_bytes() == before


def _table(path: Path) -> tuple[list, list]:
    ex = pq.read_table(path / "exemplars.parquet").to_pylist()
    feats = pq.read_table(path / "features.parquet").to_pylist()
    return sorted(ex, key=lambda r: (r["feature"], r["source"], r["rank"])), feats


def _run_cli(args, env_extra=None, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", *args], env=env, capture_output=True, text=True, check=check
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_store(store, tiny_llama, tmp_path):
    args = [
        "collect",
        "--model",
        str(tiny_llama),
        "--features",
        "mlp:0-1:0-7",
        "--window",
        "16",
        "--max-windows",
        "96",
        "--batch-size",
        "8",
        "--shard-windows",
        "32",
        "--top-k",
        "6",
        "--pool",
        "16",
        "--quantiles",
        "3",
        "--per-quantile",
        "1",
        "--random-k",
        "4",
        "--hard-negatives",
        "2",
        "--negative-ratio",
        "0.3",
        "--no-progress",
        "--out",
        str(tmp_path / "r"),
    ]
    killed = _run_cli(args, {"NEUROSCRIBE_TEST_KILL_AFTER_SHARDS": "2"}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = torch.load(tmp_path / "r" / ".collect" / "rank0-of-1.pt", weights_only=False)
    assert ckpt["miner"]["shards_done"] == [0, 1]
    assert not (tmp_path / "r" / "meta.json").exists()
    done = _run_cli(args)
    assert "wrote" in done.stdout
    assert _table(tmp_path / "r") == _table(store.path)
    assert not (tmp_path / "r" / ".collect").exists()


@pytest.mark.slow
def test_two_ranks_merge_into_the_single_process_store(store, tiny_llama, tmp_path):
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(root / "recipes/accelerate_configs/ddp.yaml"),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        "29533",
        "-m",
        "neuroscribe.distill.collect",
        "--model",
        str(tiny_llama),
        "--features",
        "mlp:0-1:0-7",
        "--window",
        "16",
        "--max-windows",
        "96",
        "--batch-size",
        "8",
        "--shard-windows",
        "32",
        "--top-k",
        "6",
        "--pool",
        "16",
        "--quantiles",
        "3",
        "--per-quantile",
        "1",
        "--random-k",
        "4",
        "--hard-negatives",
        "2",
        "--negative-ratio",
        "0.3",
        "--no-progress",
        "--out",
        str(tmp_path / "d"),
    ]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["world_size"] == 2
    ex_d, feats_d = _table(tmp_path / "d")
    ex_s, feats_s = _table(store.path)

    def found_in_order_free_sources(rows):  # hard negatives depend on the order windows are read
        return [{k: v for k, v in r.items() if k != "split"} for r in rows if r["source"] != "hard_negative"]

    assert found_in_order_free_sources(ex_d) == found_in_order_free_sources(ex_s)  # every other exemplar identical
    assert sum(r["source"] == "hard_negative" for r in ex_d) > 0
    store_d = ExemplarStore(tmp_path / "d")
    for rec in store_d.features():  # each kept hard negative still obeys the rule exactly
        for e in rec.select(sources=["hard_negative"]):
            assert e.max_activation <= 0.3 * rec.stats.max_activation + 1e-6
            assert set(rec.top_tokens[:3]) & set(e.tokens)
    for a, b in zip(feats_d, feats_s):
        assert a["feature"] == b["feature"] and a["max_activation"] == b["max_activation"]
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-9, abs=1e-12)
        assert a["variance"] == pytest.approx(b["variance"], rel=1e-9, abs=1e-12)


def test_cli_inspect_summarises(store):
    res = _run_cli(["inspect", str(store.path)])
    assert "features   32 (0 dead)" in res.stdout
    assert "by split" in res.stdout and "hard_negative" in res.stdout
    res = _run_cli(["inspect", str(store.path), "--feature", store.keys()[0]])
    assert store.keys()[0] in res.stdout
    bad = _run_cli(["inspect", str(store.path.parent / "nope")], check=False)
    assert bad.returncode == 2 and "not an exemplar store" in bad.stderr


def test_sae_and_sparsify_features_collect(tiny_llama, tmp_path):
    """SAE latents (sae-lens layout) and a sparsify top-k transcoder mined end to end, one polarity each."""
    from test_saes import _weights, sparsify_tensors, write_sae_lens, write_sparsify

    sae = write_sae_lens(tmp_path / "sae", {}, _weights(1))
    tc = write_sparsify(tmp_path / "layers.0.mlp", {"transcode": True}, sparsify_tensors(_weights(2)))
    st = ExemplarStore(
        collect(_cfg(tiny_llama, tmp_path / "s", features=(f"sae:{sae}:0-5", f"transcoder:{tc}:0-5"), max_windows=32))
    )
    kinds = {k.split("/")[0] for k in st.keys(include_dead=True)}
    assert kinds == {"sae", "transcoder"} and len(st) == 12
    assert all(k.endswith("+") for k in st.keys(include_dead=True))
    model, tok = load_model(str(tiny_llama))
    enc = __import__("neuroscribe.saes", fromlist=["x"]).load_sparse_encoder(sae)
    rec = next(r for r in st.features() if r.feature.kind == "sae")
    e = rec.select(sources=["top"])[0]
    seen = {}  # block 1's output before the final norm (hidden_states[-1] has the norm applied)
    handle = model.model.layers[1].register_forward_hook(lambda m, a, out: seen.setdefault("h", out))
    (w,) = [w for w in iter_windows(tok, iter_documents(), 16, 32, context=4) if w.window_id == e.window_id]
    context = context_prefix(tok) + list(w.context)  # every window is read after its preceding tokens
    with torch.no_grad():
        model(torch.tensor([context + list(e.token_ids)]))
    handle.remove()
    hidden = seen["h"][0] if isinstance(seen["h"], tuple) else seen["h"]
    expected = enc.encode(hidden)[0, len(context) :, rec.feature.index]
    assert torch.allclose(torch.tensor(e.activations), expected, atol=1e-5)
