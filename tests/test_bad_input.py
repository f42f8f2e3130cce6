"""Bad input gets one clear line naming the file (where there is one) and the field or option, exit code 2,
no traceback, and nothing written first: no output folder appears, nothing already there is lost."""

from __future__ import annotations

import pytest
from test_failures import MINING, cli, one_error_line

from neuroscribe.configs import CollectConfig, ExplainConfig, MiningConfig
from neuroscribe.distill.collect import collect


@pytest.fixture(scope="module")
def store(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "store"
    return collect(
        CollectConfig(
            out=str(out),
            model=str(tiny_llama),
            features=("mlp:1:0-1",),
            window=12,
            max_windows=48,
            mining=MINING,
            progress=False,
        )
    )


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
