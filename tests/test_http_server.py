"""The OpenAI-compatible backend and the HTTP simulators against a REAL server: llama-cpp-python
serving the bundled SmolLM2 GGUF on 127.0.0.1, with counting/fault-injecting proxies of ours in
front (tests/servers.py). Nothing here is mocked: every counted request reached a real server."""

from __future__ import annotations

import logging
import math

import pytest
from servers import SERVER_MODEL, Proxy, dead_url, llama_server  # noqa: F401  (session fixture)

from neuroscribe.backends import (
    BackendError,
    Budget,
    BudgetExceeded,
    ChatRequest,
    RetryPolicy,
    SamplingParams,
    load_backend,
)
from neuroscribe.cache import Cache
from neuroscribe.prompts import simulator_prompt
from neuroscribe.records import Exemplar
from neuroscribe.simulators.http import (
    EchoLogprobSimulator,
    ParsedNumberSimulator,
    parse_numbers,
    read_slot,
)

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, timeout=120)


def _backend(*urls, cache=None, **opts):
    return load_backend(f"openai:{SERVER_MODEL}@{','.join(urls)}", cache, retry=opts.pop("retry", FAST_RETRY), **opts)


def _chat(n, max_tokens=6, temperature=0.0):
    return [
        ChatRequest.user(f"Write the word number {i}.", SamplingParams(temperature, max_tokens, seed=3))
        for i in range(n)
    ]


def test_chat_generation_returns_text_tokens_and_finish_reason(llama_server):
    out = _backend(llama_server).generate(_chat(2, max_tokens=4) + [ChatRequest.user("Hi", SamplingParams(0.0, 64))])
    assert all(c.text.strip() for c in out)
    assert [c.finish_reason for c in out[:2]] == ["length", "length"] and [c.tokens_out for c in out[:2]] == [4, 4]
    assert out[2].tokens_out < 64 and out[2].finish_reason == "stop" and all(c.tokens_in > 10 for c in out)


def test_sampling_seed_and_index_reach_the_server(llama_server):
    params = SamplingParams(temperature=1.5, max_tokens=12, seed=11)
    reqs = [ChatRequest.user("Invent a name.", params, sample_index=i) for i in (0, 0, 1, 2, 3)]
    backend = _backend(llama_server)
    texts = [c.text for c in backend.generate(reqs[:1] + reqs[2:])]
    assert backend.generate(reqs[:1])[0].text == texts[0]  # same seed + index: same sample
    assert len(set(texts)) > 1  # other indices: other seeds


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit_is_respected(llama_server, limit):
    with Proxy(llama_server, delay=0.3) as proxy:
        _backend(proxy.url, max_concurrency=limit).generate(_chat(6, max_tokens=2))
    assert proxy.max_in_flight == limit and proxy.forwarded == 6


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retryable_errors_are_retried(llama_server, status):
    with Proxy(llama_server, fail_first=3, fail_status=status) as proxy:
        out = _backend(proxy.url, max_concurrency=1).generate(_chat(2, max_tokens=2))
    assert len(out) == 2 and proxy.received == 5 and proxy.forwarded == 2


def test_client_errors_are_not_retried(llama_server):
    with (
        Proxy(llama_server, fail_first=1, fail_status=400, fail_message="bad request body") as proxy,
        pytest.raises(BackendError, match="bad request body"),
    ):
        _backend(proxy.url).generate(_chat(1))
    assert proxy.received == 1


def test_requests_spread_over_urls_and_avoid_a_dead_one(llama_server, tmp_path):
    with Proxy(llama_server, delay=0.2) as a, Proxy(llama_server, delay=0.2) as b:
        dead = dead_url()  # drawn while both proxies hold their ports: a free port drawn before could become theirs
        backend = _backend(a.url, dead, b.url, max_concurrency=4)
        out = backend.generate(_chat(8, max_tokens=2))
    assert len(out) == 8 and all(c.text for c in out)
    assert a.forwarded >= 2 and b.forwarded >= 2 and a.forwarded + b.forwarded == 8
    assert backend.pool.failures[dead] >= 1 and backend.pool.failures[a.url] == backend.pool.failures[b.url] == 0


def test_budget_max_calls_stops_before_sending(llama_server, tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    with Proxy(llama_server) as proxy:
        backend = _backend(proxy.url, cache=cache, max_concurrency=1, budget=Budget(max_calls=3))
        with pytest.raises(BudgetExceeded, match="max_calls=3"):
            backend.generate(_chat(5, max_tokens=2))
    assert proxy.received == 3 and len(cache) == 3  # what finished is kept


def test_budget_max_usd_stops_before_sending(llama_server):
    prices = {"openai": {SERVER_MODEL: {"input": 100.0, "output": 100.0}}}  # USD per 1M tokens
    with Proxy(llama_server) as proxy:
        backend = _backend(proxy.url, prices=prices, budget=Budget(max_usd=0.001))
        with pytest.raises(BudgetExceeded, match="max_usd"):
            backend.generate([ChatRequest.user("hello " * 50, SamplingParams(max_tokens=16))])
    assert proxy.received == 0
    with pytest.raises(ValueError, match="needs a price"):
        _backend(llama_server, budget=Budget(max_usd=1.0))  # unpriced model: a USD budget cannot work


def test_api_key_is_sent_but_never_stored_logged_or_shown(llama_server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-0123456789"
    cache = Cache(tmp_path / "c.sqlite")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)
    with (
        Proxy(llama_server) as proxy,
        Proxy(
            llama_server, fail_first=1, fail_status=401, fail_message=f"Incorrect API key provided: {secret}"
        ) as denied,
    ):
        backend = _backend(proxy.url, cache=cache)  # built before the key exists: it is read at call time
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        backend.generate(_chat(2, max_tokens=2))
        backend.prompt_logprobs("The cat sat.", top_k=2)
        with pytest.raises(BackendError) as info:
            _backend(denied.url).generate(_chat(1))
    assert proxy.auth_headers and all(h == f"Bearer {secret}" for h in proxy.auth_headers)
    assert "Incorrect API key" in str(info.value) and secret not in str(info.value)
    assert secret not in caplog.text and secret not in repr(backend)
    cache.close()
    for f in tmp_path.iterdir():  # the database and its WAL/SHM files
        assert secret.encode() not in f.read_bytes()


def test_prompt_logprobs_line_up_with_local_transformers(llama_server, smollm2):
    prompt = "The cat sat on the mat. The dog slept on the rug, and the cat sat by the door."
    local = load_backend("hf:smollm2-135m-instruct", loaded=smollm2).prompt_logprobs(prompt, top_k=5)
    served = _backend(llama_server).prompt_logprobs(prompt, top_k=5)
    unshifted = _backend(llama_server, echo_alignment="same").prompt_logprobs(prompt, top_k=5)
    assert [(p.offset, p.token) for p in served] == [(p.offset, p.token) for p in local]

    def best(p):
        return max(p.top, key=p.top.get) if p.top else None

    compared = [i for i in range(2, len(local))]
    agree = sum(best(served[i]) == best(local[i]) for i in compared) / len(compared)
    agree_unshifted = sum(best(unshifted[i]) == best(local[i]) for i in compared) / len(compared)
    assert agree >= 0.8 and agree_unshifted <= 0.3  # the off-by-one is real, and handled
    close = [i for i in compared if served[i].logprob is not None and local[i].logprob is not None]
    assert close and all(abs(served[i].logprob - local[i].logprob) < 0.5 for i in close)


# ------------------------------------------------------------------------------- simulators

EXEMPLARS = (
    Exemplar(("The", " cat", " sat", " on", " the", " mat"), (0.0, 5.0, 0.0, 0.0, 0.0, 1.0), 11, "top", "score"),
    Exemplar((" dogs", " and", " cats"), (0.0, 0.0, 4.0), 12, "random", "score"),
)
EXPLANATION = "the word cat"


def test_read_slot_renormalises_counts_missing_and_fails_without_digits():
    value, missing = read_slot({"2": math.log(0.3), "4": math.log(0.1), "cat": math.log(0.5)})
    assert value == pytest.approx(2.5) and missing == 8  # (2*0.3 + 4*0.1) / 0.4
    assert read_slot({"cat": -0.1, " 5": -1.0}) == (None, 10)  # no digit token: a failure, never 0
    assert read_slot(None) == (None, 10)


def test_parse_numbers_needs_one_number_per_token():
    assert parse_numbers("0\n7\n 2", 3) == ([0.0, 7.0, 2.0], "")
    assert parse_numbers("Here:\ncat\t3\nsat\t0", 2) == ([3.0, 0.0], "")  # echoed token lines parse
    assert parse_numbers("3\n4", 3)[0] is None and "expected 3" in parse_numbers("3\n4", 3)[1]
    assert parse_numbers("3\n12", 2)[0] is None
    # Prose with a number in it does not count: this reply gives 2 numbers for 3 tokens.
    assert parse_numbers("The\tunknown\n cat\tcat\t0\n sat\t1\nactivation (9 to", 3)[0] is None


def test_echo_simulator_agrees_with_the_local_simulator_when_no_digit_is_missing(smollm2):
    """Two independent readings of the same prompt: top-k logprobs (k large) vs the digit logits."""
    from neuroscribe.simulators.allatonce import LocalSimulator

    echo = EchoLogprobSimulator(load_backend("hf:smollm2-135m-instruct", loaded=smollm2), top_k=1000)
    ours = echo.simulate(EXPLANATION, EXEMPLARS)
    reference = LocalSimulator(*smollm2).simulate(EXPLANATION, EXEMPLARS)
    assert echo.last_stats.n_missing_digits == 0 and echo.last_stats.n_failed_tokens == 0
    diffs = [abs(a - b) for s, r in zip(ours, reference) for a, b in zip(s.predicted, r.predicted)]
    assert len(diffs) == 9 and max(diffs) < 1e-3


def test_simulators_refuse_explain_split_exemplars(smollm2):
    leaked = Exemplar(("a",), (1.0,), 5, "top", "explain")
    backend = load_backend("hf:smollm2-135m-instruct", loaded=smollm2)
    for sim in (EchoLogprobSimulator(backend), ParsedNumberSimulator(backend)):
        with pytest.raises(ValueError, match="held-out"):
            sim.simulate(EXPLANATION, [leaked])


@pytest.mark.slow
def test_echo_simulator_on_the_server_matches_the_local_one(llama_server, smollm2, tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    served = _backend(llama_server, cache=cache)
    sim = EchoLogprobSimulator(served, top_k=5)
    out = sim.simulate(EXPLANATION, EXEMPLARS)
    assert [len(s.predicted) for s in out] == [6, 3] and [s.window_id for s in out] == [11, 12]
    assert out[0].true_activations == EXEMPLARS[0].activations
    stats = sim.last_stats
    assert stats.n_tokens == 9 and stats.n_failed_tokens == sum(math.isnan(v) for s in out for v in s.predicted)
    ok = [v for s in out for v in s.predicted if not math.isnan(v)]
    assert ok and all(0.0 <= v <= 9.0 for v in ok)
    # Missing digits, recounted from the raw logprobs (cache hits now: no new request).
    expected_missing = 0
    for exemplar in EXEMPLARS:
        prompt = simulator_prompt(EXPLANATION, exemplar.tokens)
        by_offset = {p.offset: p for p in served.prompt_logprobs(prompt.text, top_k=5)}
        for offset in prompt.slot_offsets:
            digits = [t for t in (by_offset[offset].top or {}) if t in "0123456789" and len(t) == 1]
            expected_missing += 10 - len(digits) if digits else 0
    assert stats.n_missing_digits == expected_missing > 0  # top-5 cannot hold all ten digits
    assert cache.usage().calls == 2 and cache.usage().cached_hits == 2
    local = EchoLogprobSimulator(load_backend("hf:smollm2-135m-instruct", loaded=smollm2), top_k=5)
    for s, ref in zip(out, local.simulate(EXPLANATION, EXEMPLARS)):
        pairs = [(a, b) for a, b in zip(s.predicted, ref.predicted) if not (math.isnan(a) or math.isnan(b))]
        assert pairs and all(abs(a - b) < 0.75 for a, b in pairs)  # Q4_1 server vs fp32 copy


def test_parsed_number_simulator_counts_failures_instead_of_scoring_zeros(llama_server, tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    sim = ParsedNumberSimulator(_backend(llama_server, cache=cache))
    out = sim.simulate(EXPLANATION, EXEMPLARS)
    assert [len(s.predicted) for s in out] == [6, 3]
    stats = sim.last_stats
    failed = [s for s in out if any(math.isnan(v) for v in s.predicted)]
    assert stats.n_failed_exemplars == len(failed) and len(stats.errors) == len(failed)
    assert all(all(math.isnan(v) for v in s.predicted) for s in failed)  # a failure is whole and explicit
    assert all(0 <= v <= 9 for s in out if s not in failed for v in s.predicted)
    assert stats.n_failed_tokens == sum(len(s.predicted) for s in failed)
    assert cache.usage("simulate").calls == 2
