"""The disk cache and cost accounting; the crash-safety tests run a real llama.cpp server behind a
counting proxy of ours, so every counted request really reached a server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from servers import SERVER_MODEL, Proxy, llama_server  # noqa: F401  (session fixture)

from neuroscribe.backends import ChatRequest, SamplingParams, load_backend
from neuroscribe.cache import Cache, Usage, cache_key
from neuroscribe.costs import PriceTable, resolve_prices


def _payload(**change):
    base = {
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"temperature": 1.0, "seed": 1},
        "sample_index": 0,
    }
    return {**base, **change}


def test_key_depends_on_content_only():
    key = cache_key("openai", "m", _payload())
    assert key == cache_key("openai", "m", _payload())
    assert (
        len(
            {
                key,
                cache_key("openai", "m", _payload(sample_index=1)),
                cache_key("openai", "m", _payload(params={"temperature": 1.0, "seed": 2})),
                cache_key("openai", "m", _payload(messages=[{"role": "user", "content": "hi!"}])),
                cache_key("openai", "other", _payload()),
                cache_key("anthropic", "m", _payload()),
            }
        )
        == 6
    )


def test_rows_are_committed_at_once_and_wal_is_on(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = Cache(path)
    cache.put("k1", {"text": "a"}, kind="openai", model="m", stage="explain", tokens_in=10, tokens_out=2, usd=0.5)
    # A second, independent connection sees the row while the first is still open (no pending transaction).
    other = sqlite3.connect(path)
    assert other.execute("SELECT value FROM entries WHERE key='k1'").fetchone() == ('{"text": "a"}',)
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()
    assert Cache(path).get("k1") == {"text": "a"} and Cache(path).get("nope") is None


def test_usage_is_per_stage_and_per_run(tmp_path):
    path = tmp_path / "c.sqlite"
    first = Cache(path)
    first.put("a", 1, kind="openai", model="m", stage="explain", tokens_in=100, tokens_out=10, usd=0.25)
    first.put("b", 2, kind="openai", model="m", stage="simulate", tokens_in=50, tokens_out=0, usd=None)
    first.record_hit("a", kind="openai", model="m", stage="explain")
    assert first.usage("explain") == Usage(1, 1, 100, 10, 0.25, 0)
    assert first.usage("simulate") == Usage(1, 0, 50, 0, 0.0, 1)  # unpriced: counted, flagged, 0 USD
    assert first.usage() == Usage(2, 1, 150, 10, 0.25, 1)
    second = Cache(path)
    second.record_hit("b", kind="openai", model="m", stage="simulate")
    assert second.usage() == Usage(0, 1, 0, 0, 0.0, 0)
    assert second.usage(all_runs=True) == Usage(2, 2, 150, 10, 0.25, 1)
    assert set(second.stages(all_runs=True)) == {"explain", "simulate"}


def test_price_table_matches_globs_and_local_models_are_free(tmp_path):
    table = resolve_prices({"openai": {"my-model": {"input": 2.0, "output": 4.0}}})
    assert table.cost("openai", "my-model", 1_000_000, 500_000) == pytest.approx(4.0)
    assert table.cost("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert table.cost("openai", "unknown-model", 10, 10) is None
    assert table.cost("hf", "anything", 10**9, 10**9) == 0.0 and table.cost("vllm", "x", 5, 5) == 0.0
    bad = tmp_path / "prices.yaml"
    bad.write_text("openai:\n  gpt-x: {input: cheap}\n")
    with pytest.raises(ValueError, match=r"prices.yaml: field openai.gpt-x"):
        PriceTable.from_file(bad)


def _chat(n, max_tokens=8):
    return [
        ChatRequest.user(f"Say the number {i}.", SamplingParams(0.0, max_tokens, seed=0), sample_index=0)
        for i in range(n)
    ]


def test_second_run_makes_zero_requests_even_through_another_url(llama_server, tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    with Proxy(llama_server) as one, Proxy(llama_server) as two:
        first = load_backend(f"openai:{SERVER_MODEL}@{one.url}", cache, stage="explain").generate(_chat(3))
        assert one.forwarded == 3
        again = load_backend(f"openai:{SERVER_MODEL}@{two.url}", Cache(cache.path), stage="explain").generate(_chat(3))
        assert two.received == 0 and one.received == 3
    assert [c.text for c in again] == [c.text for c in first] and all(c.cached for c in again)
    assert cache.usage("explain").calls == 3 and cache.usage("explain").tokens_in > 0


_JOB = textwrap.dedent(
    """
    import json, sys
    from neuroscribe.backends import ChatRequest, SamplingParams, load_backend
    from neuroscribe.cache import Cache
    url, cache_path, out_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    backend = load_backend("openai:smollm2@" + url, Cache(cache_path), max_concurrency=2)
    requests = [ChatRequest.user(f"Count from {i} to {i + 5}.", SamplingParams(0.0, 10)) for i in range(n)]
    out = backend.generate(requests)
    with open(out_path, "w") as f:
        json.dump([c.text for c in out], f)
    """
)


@pytest.mark.slow
def test_kill_9_midway_loses_at_most_the_calls_in_flight(llama_server, tmp_path):
    n, concurrency = 8, 2
    script, cache_path, out_path = tmp_path / "job.py", tmp_path / "c.sqlite", tmp_path / "out.json"
    script.write_text(_JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with Proxy(llama_server, delay=0.3) as proxy:
        args = [sys.executable, str(script), proxy.url, str(cache_path), str(out_path), str(n)]
        job = subprocess.Popen(args, env=env)
        deadline = time.monotonic() + 120
        while proxy.forwarded < 3 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
        assert job.returncode == -signal.SIGKILL and not out_path.exists()  # really killed midway
        sent_before = proxy.received
        survived = len(Cache(cache_path))
        assert 1 <= survived < n
        rerun = subprocess.run(args, env=env, timeout=180)
        assert rerun.returncode == 0
        total = proxy.received
    texts = json.loads(out_path.read_text())
    assert len(texts) == n and all(isinstance(t, str) and t for t in texts)
    assert total - sent_before == n - survived  # the rerun asked only for what was not cached
    assert total <= n + concurrency
