"""explain (best-of-k) and score: caching, resume after kill -9, two ranks, held-out scoring, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuroscribe.distill.collect import CollectConfig, collect
from neuroscribe.distill.collect.mining import MiningConfig
from neuroscribe.distill.explain import ExplainConfig, explain
from neuroscribe.distill.score import ScoreConfig, score
from neuroscribe.runs.store import ExemplarStore

MINING = MiningConfig(top_k=6, pool=16, quantiles=3, per_quantile=1, random_k=9, inactive_k=3, hard_negatives=1)


@pytest.fixture(scope="module")
def tiny_store(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("ex") / "store"
    return collect(
        CollectConfig(
            out=str(out),
            model=str(tiny_llama),
            features=("mlp:1:0-3",),
            window=12,
            max_windows=64,
            batch_size=16,
            mining=MINING,
            progress=False,
        )
    )


def _cfg(tiny_llama, store, out, **kw) -> ExplainConfig:
    spec = f"hf:{tiny_llama}"
    base = dict(
        store=str(store),
        out=str(out),
        teacher=spec,
        simulator=spec,
        k=4,
        max_tokens=12,
        batch_features=2,
        progress=False,
    )
    base.update(kw)
    return ExplainConfig(**base)


def _score_cfg(explanations, store, model, out, **kw) -> ScoreConfig:
    return ScoreConfig(str(explanations), str(store), str(out), simulator=f"hf:{model}", progress=False, **kw)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]


def _cli(*args: str, env: dict | None = None, check: bool = True):
    return subprocess.run(
        [sys.executable, "-m", "neuroscribe.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        check=check,
    )


@pytest.fixture(scope="module")
def explained(tiny_llama, tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ex") / "run"
    explain(_cfg(tiny_llama, tiny_store, out))
    return out


def test_every_feature_gets_k_scored_candidates_on_held_out_exemplars(explained, tiny_store):
    store = ExemplarStore(tiny_store)
    rows = _rows(explained)
    by_feature: dict[str, list[dict]] = {}
    for r in rows:
        by_feature.setdefault(r["explanation"]["feature"], []).append(r)
    assert list(by_feature) == store.keys()  # store order
    for key, cands in by_feature.items():
        assert 1 <= len(cands) <= 4
        assert [c["explanation"]["sample_index"] for c in cands] == sorted(
            c["explanation"]["sample_index"] for c in cands
        )
        texts = [c["explanation"]["text"].lower() for c in cands if c["explanation"]["ok"]]
        assert len(texts) == len(set(texts)), "duplicates are dropped"
        explain_windows = {e.window_id for e in store.get(key).select(split="explain")}
        for c in cands:
            assert c["split"] == "score" and c["explanation"]["raw"]
            sims = c["simulations"]
            if c["status"] == "insufficient":  # a split without both sides is never simulated
                assert not sims and math.isnan(c["score"]) and c["reason"].startswith("insufficient")
            elif c["explanation"]["ok"]:
                assert sims and not {s["window_id"] for s in sims} & explain_windows
                assert len(sims) == c["n_exemplars"]
            else:
                assert math.isnan(c["score"]) and c["explanation"]["error"] and c["status"] == "unparsed"
    meta = json.loads((explained / "meta.json").read_text())
    assert meta["k"] == 4 and meta["n_candidates"] == len(rows) and meta["prompt_version"]
    assert meta["n_candidates"] + meta["n_duplicates_dropped"] == 4 * len(store.keys())


def test_rerun_makes_zero_llm_calls(explained, tiny_llama, tiny_store, tmp_path):
    first = json.loads((explained / "usage.json").read_text())
    assert first["explain"]["calls"] == 4 * len(ExemplarStore(tiny_store).keys())
    again = tmp_path / "again"
    explain(_cfg(tiny_llama, tiny_store, again, cache=str(explained / "cache.sqlite")))
    usage = json.loads((again / "usage.json").read_text())
    assert all(u["calls"] == 0 for u in usage.values()), usage
    assert usage["explain"]["cached_hits"] == first["explain"]["calls"]
    assert [r["explanation"]["text"] for r in _rows(again)] == [r["explanation"]["text"] for r in _rows(explained)]
    assert [r["score"] for r in _rows(again)] == pytest.approx([r["score"] for r in _rows(explained)], nan_ok=True)


def test_existing_output_is_not_clobbered(explained, tiny_llama, tiny_store):
    before = (explained / "candidates.jsonl").read_bytes()
    with pytest.raises(FileExistsError):
        explain(_cfg(tiny_llama, tiny_store, explained))
    assert (explained / "candidates.jsonl").read_bytes() == before


@pytest.mark.slow
def test_kill_minus_9_loses_at_most_in_flight_work(explained, tiny_llama, tiny_store, tmp_path):
    out = tmp_path / "killed"
    args = [
        "explain",
        "--store",
        str(tiny_store),
        "--out",
        str(out),
        "--teacher",
        f"hf:{tiny_llama}",
        "--simulator",
        f"hf:{tiny_llama}",
        "--k",
        "4",
        "--max-tokens",
        "12",
        "--no-progress",
    ]
    killed = _cli(*args, env={"NEUROSCRIBE_TEST_KILL_AFTER_FEATURES": "3"}, check=False)
    assert killed.returncode == -9
    part_lines = (out / "parts" / "rank0.jsonl").read_text().splitlines()
    assert len(part_lines) == 3 and not (out / "candidates.jsonl").exists()
    from neuroscribe.cache import Cache

    with Cache(out / "cache.sqlite") as db:
        first_calls = db.usage("explain", all_runs=True).calls
    resumed = _cli(*args)
    assert "wrote" in resumed.stdout
    with Cache(out / "cache.sqlite") as db:
        total = db.usage("explain", all_runs=True).calls
    n = len(ExemplarStore(tiny_store).keys())
    assert first_calls >= 12 and total == 4 * n, "every teacher request was sent exactly once"
    assert [r["explanation"]["text"] for r in _rows(out)] == [r["explanation"]["text"] for r in _rows(explained)]


@pytest.mark.slow
def test_two_ranks_write_the_single_process_output(explained, tiny_llama, tiny_store, tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(root / "recipes/accelerate_configs/ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "29541",
        "-m",
        "neuroscribe.cli",
        "explain",
        "--store",
        str(tiny_store),
        "--out",
        str(out),
        "--teacher",
        f"hf:{tiny_llama}",
        "--simulator",
        f"hf:{tiny_llama}",
        "--k",
        "4",
        "--max-tokens",
        "12",
        "--no-progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["config.json", "rank0.jsonl", "rank1.jsonl"]
    mine, single = _rows(out), _rows(explained)
    assert [(r["explanation"]["feature"], r["explanation"]["text"]) for r in mine] == [
        (r["explanation"]["feature"], r["explanation"]["text"]) for r in single
    ]
    assert [r["score"] for r in mine] == pytest.approx([r["score"] for r in single], nan_ok=True, abs=1e-5)


def test_score_any_explanations_file(tiny_llama, tiny_store, tmp_path):
    keys = ExemplarStore(tiny_store).keys()
    human = tmp_path / "human.jsonl"
    human.write_text(
        "".join(json.dumps({"feature": k, "explanation": f"the word number {i}"}) + "\n" for i, k in enumerate(keys))
    )
    scored = score(_score_cfg(human, tiny_store, tiny_llama, tmp_path / "s", split="test"))
    assert [s.explanation.feature for s in scored] == keys
    assert all(s.split == "test" and s.n_exemplars > 0 for s in scored)
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["n"] == len(keys) and summary["split"] == "test"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"feature": "mlp/L9/1+", "explanation": "x"}) + "\n")
    with pytest.raises(KeyError, match="not in the store"):
        score(_score_cfg(bad, tiny_store, tiny_llama, tmp_path / "s2"))
    bad.write_text('{"feature": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: needs string fields"):
        score(_score_cfg(bad, tiny_store, tiny_llama, tmp_path / "s3"))


def test_bad_explain_input(tiny_llama, tiny_store, tmp_path):
    with pytest.raises(ValueError, match="held-out split"):
        explain(_cfg(tiny_llama, tiny_store, tmp_path / "a", split="explain"))
    with pytest.raises(KeyError, match="no feature"):
        explain(_cfg(tiny_llama, tiny_store, tmp_path / "b", features=("mlp/L7/1+",)))
    res = _cli("explain", "--store", str(tmp_path / "nostore"), "--out", str(tmp_path / "c"), check=False)
    assert res.returncode == 2 and "not an exemplar store" in res.stderr


@pytest.mark.slow
def test_score_on_two_ranks_matches_one_process(tiny_llama, tiny_store, tmp_path):
    keys = ExemplarStore(tiny_store).keys()
    human = tmp_path / "human.jsonl"
    human.write_text(
        "".join(
            json.dumps({"feature": k, "explanation": f"digits and the word {i}"}) + "\n" for i, k in enumerate(keys * 2)
        )
    )
    single = score(_score_cfg(human, tiny_store, tiny_llama, tmp_path / "one"))
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(root / "recipes/accelerate_configs/ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "29547",
        "-m",
        "neuroscribe.cli",
        "score",
        "--explanations",
        str(human),
        "--store",
        str(tiny_store),
        "--simulator",
        f"hf:{tiny_llama}",
        "--out",
        str(tmp_path / "two"),
        "--no-progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "parts").iterdir()) == ["rank0.json", "rank1.json"]
    two = [json.loads(line) for line in (tmp_path / "two" / "scored.jsonl").read_text().splitlines()]
    assert [(r["explanation"]["feature"], r["explanation"]["text"]) for r in two] == [
        (s.explanation.feature, s.explanation.text) for s in single
    ]
    assert [r["score"] for r in two] == pytest.approx([s.score for s in single], nan_ok=True, abs=1e-6)
