"""Bad input gets one clear line naming the file (where there is one) and the field or option, exit code 2,
no traceback, and nothing written first: no output folder appears, nothing already there is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_failures import cli, one_error_line, small_store

from neuroscribe.configs import CollectConfig, ExplainConfig, MiningConfig
from neuroscribe.runs.store import ExemplarStore


@pytest.fixture(scope="module")
def store(tiny_llama, tmp_path_factory):
    return small_store(tiny_llama, tmp_path_factory.mktemp("bad") / "store")


# --------------------------------------------------------------------------- options


COLLECT = ("collect", "--model", "no-such-model", "--features", "mlp:0")
EXPLAIN = ("explain", "--store", "no-such-store", "--teacher", "patterns:v1")
SCORE = ("score", "--explanations", "x.jsonl", "--store", "no-such-store")


@pytest.mark.parametrize(
    "args, says",
    [
        (EXPLAIN + ("--k", "0"), "--k must be >= 1, got 0"),
        (EXPLAIN + ("--split", "explain"), "--split must be a held-out split"),
        (SCORE + ("--split", "explain"), "--split must be a held-out split"),
        (COLLECT + ("--splits", "explain,score,score"), "--splits needs at least two distinct names"),
        (COLLECT + ("--window", "-5"), "--window must be >= 1, got -5"),
        (COLLECT + ("--pool", "-3"), "--pool must be >= 0, got -3"),
        (COLLECT + ("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
        (COLLECT + ("--shard-windows", "0"), "--shard-windows must be >= 1, got 0"),
        (COLLECT + ("--max-windows", "-1"), "--max-windows must be >= 0, got -1"),
        (EXPLAIN + ("--max-features", "-1"), "--max-features must be >= 0, got -1"),
        (EXPLAIN + ("--retries", "-1"), "--retries must be >= 0, got -1"),
        (EXPLAIN + ("--concurrency", "0"), "--concurrency must be >= 1, got 0"),
        (SCORE + ("--retries", "-1"), "--retries must be >= 0, got -1"),
    ],
)
def test_an_option_out_of_range_is_one_line_naming_it_and_writes_nothing(args, says, tmp_path):
    out = tmp_path / "out"
    assert says in one_error_line(cli(*args, "--out", str(out)))
    assert not out.exists()


def test_the_python_api_refuses_the_same_values():
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        CollectConfig(out="o", batch_size=0)
    with pytest.raises(ValueError, match="--pool must be >= 0"):
        MiningConfig(pool=-3)
    with pytest.raises(ValueError, match="--max-features must be >= 0"):
        ExplainConfig(store="s", out="o", max_features=-1)


# --------------------------------------------------------------------------- input files


def test_a_store_whose_mining_block_is_not_an_object_is_one_line_naming_meta_json(store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    meta = json.loads((bad / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps({**meta, "mining": None}))
    line = one_error_line(cli("inspect", str(bad)))
    assert "meta.json: field 'mining' must be an object, got NoneType" in line
    (bad / "meta.json").write_text(json.dumps({**meta, "mining": {**meta["mining"], "splits": "explain"}}))
    assert "meta.json: field 'mining.splits' must be a list" in one_error_line(cli("inspect", str(bad)))


@pytest.mark.parametrize(
    "content, says",
    [
        (b"learning_rate: [1, 2\nmax_steps: : :\n", "recipe.yaml:2: not valid YAML"),
        (b"- learning_rate\n- 1\n", "recipe.yaml: a recipe is a mapping of keys to values, got list"),
        (b"max_steps: 2\n# caf\xe9\n", "recipe.yaml: not UTF-8 text"),
    ],
)
def test_a_recipe_that_is_not_a_yaml_mapping_is_one_line_naming_it(content, says, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    assert says in one_error_line(cli("train", "sft", "--config", str(recipe)))


def test_a_file_that_is_not_utf8_is_one_line_naming_file_and_line(store, tmp_path):
    from neuroscribe.runs.datasets import read_heldout
    from neuroscribe.runs.files import RunFileError

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        b'{"feature": "mlp/L1/0+", "explanation": "ok"}\n{"feature": "mlp/L1/1+", "explanation": "\xe9"}\n'
    )
    out = tmp_path / "s"
    line = one_error_line(cli("score", "--explanations", str(latin), "--store", str(store), "--out", str(out)))
    assert "latin.jsonl:2: not UTF-8 text" in line
    assert not out.exists()
    heldout = tmp_path / "heldout.txt"
    heldout.write_bytes(b"mlp/L1/0+\nmlp/L1/1+ # caf\xe9\n")
    with pytest.raises(RunFileError, match=r"heldout.txt:2: not UTF-8 text"):
        read_heldout(heldout)


def _score(store, explanations, out, *extra):
    return cli("score", "--explanations", str(explanations), "--store", str(store), "--out", str(out), *extra)


def test_an_empty_explanations_file_is_refused_before_anything_is_written(store, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    out = tmp_path / "s"
    assert "empty.jsonl: holds no explanations" in one_error_line(_score(store, empty, out))
    assert not out.exists(), "no scored.jsonl, summary.json or parts/ of nothing"


def test_an_explanation_longer_than_the_cap_is_one_line_naming_file_and_line(store, tmp_path):
    from neuroscribe.distill.score import MAX_EXPLANATION_CHARS

    key = ExemplarStore(store).keys()[0]
    long = tmp_path / "long.jsonl"
    rows = [{"feature": key, "explanation": "fine"}, {"feature": key, "explanation": "x" * 10_000_000}]
    long.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "s"
    line = one_error_line(_score(store, long, out))
    assert f"long.jsonl:2: explanation is 10,000,000 characters, longer than the {MAX_EXPLANATION_CHARS:,}" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "features, says",
    [
        ("mlp:1:0;pca:99:3", "features 'pca:99:3': layer 99 does not exist (model has layers 0..1)"),
        (
            "pca:1:3;ica:1.resid_post:999",
            "features 'ica:1.resid_post:999': 999 directions asked for, the site has only 64",
        ),
        ("pca:1:3;mlp:7", "features 'mlp:7': layer 7 does not exist"),
    ],
)
def test_a_basis_spec_the_model_cannot_have_is_one_line_and_fits_nothing_first(features, says, tiny_llama, tmp_path):
    out = tmp_path / "store"
    args = ("collect", "--model", str(tiny_llama), "--features", features, "--out", str(out), "--max-windows", "8")
    assert says in one_error_line(cli(*args, "--window", "8", "--no-progress"))
    assert not out.exists(), "no basis file is fitted into the output before every item is known to be good"


def test_a_corrupt_collect_checkpoint_is_one_line_naming_it_and_overwrite_discards_it(tiny_llama, tmp_path):
    import torch

    out = tmp_path / "store"
    ckpt = out / ".collect" / "rank0-of-1.pt"
    ckpt.parent.mkdir(parents=True)
    args = ("collect", "--model", str(tiny_llama), "--features", "mlp:1:0", "--out", str(out), "--window", "8")
    args += ("--max-windows", "16", "--no-progress")
    ckpt.write_bytes(b"PK\x03\x04 cut short by a kill")
    line = one_error_line(cli(*args))
    assert f"{ckpt}: not a readable collect checkpoint" in line and "--overwrite" in line
    assert ckpt.read_bytes() == b"PK\x03\x04 cut short by a kill", "nothing is deleted without --overwrite"
    torch.save({"fingerprint": "x", "miner": {"version": 99}}, ckpt)
    assert "a different collect configuration" in one_error_line(cli(*args))
    torch.save([1, 2], ckpt)
    assert f"{ckpt}: not a collect checkpoint" in one_error_line(cli(*args))
    assert cli(*args, "--overwrite").returncode == 0
    assert (out / "meta.json").exists() and not ckpt.exists()


# --------------------------------------------------------------------------- explain's output folder


def test_an_explain_that_fails_before_any_feature_leaves_no_folder(store, tiny_llama, tmp_path):
    out = tmp_path / "e"
    args = ("explain", "--store", str(store), "--out", str(out), "--teacher", f"hf:{tiny_llama}", "--k", "1")
    res = cli(*args, "--simulator", f"hf:{tiny_llama}", "--prompt", "output", "--no-progress")
    assert "prompt style 'output' needs the store's output side" in one_error_line(res)
    assert not out.exists(), "no parts/, no cache, no empty folder"


def test_a_cache_inside_an_input_is_refused(store, tiny_llama, tmp_path):
    before = sorted(p.name for p in Path(store).iterdir())
    cache = Path(store) / "x.sqlite"
    res = cli("explain", "--store", str(store), "--out", str(tmp_path / "e"), "--cache", str(cache))
    assert f"--cache {cache} and input --store {store} overlap" in one_error_line(res)
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"feature": ExemplarStore(store).keys()[0], "explanation": "x"}) + "\n")
    res = _score(store, ok, tmp_path / "s", "--simulator", f"hf:{tiny_llama}", "--cache", str(tiny_llama / "c.sqlite"))
    assert f"and input --simulator hf:{tiny_llama} overlap" in one_error_line(res)
    assert f"--cache {ok} and input --explanations" in one_error_line(
        _score(store, ok, tmp_path / "s", "--cache", str(ok))
    )
    with pytest.raises(ValueError, match="--cache .* and input --store"):
        ExplainConfig(store=str(store), out=str(tmp_path / "e"), cache=str(cache))
    assert sorted(p.name for p in Path(store).iterdir()) == before and not (tmp_path / "e").exists()


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.txt"])
def test_a_corpus_file_that_is_not_utf8_is_one_line_naming_it(name, tiny_llama, tmp_path):
    corpus = tmp_path / name
    text = "caf\xe9 " + "words " * 40
    corpus.write_bytes(
        (json.dumps({"text": text}, ensure_ascii=False) if name.endswith("jsonl") else text).encode("latin-1")
    )
    out = tmp_path / "store"
    args = ("collect", "--model", str(tiny_llama), "--features", "mlp:1:0", "--dataset", str(corpus), "--out", str(out))
    assert f"{corpus}:1: not UTF-8 text" in one_error_line(cli(*args, "--window", "8", "--no-progress"))
    assert not out.exists()
