"""Backends without a network: spec parsing, the local transformers backend on a tiny random Llama,
the shared retry/budget/URL machinery, echo-logprob alignment, and Anthropic through a recorded
HTTP double (the only test double here: no Anthropic API is reachable from this machine)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from neuroscribe.backends import (
    BackendError,
    Budget,
    BudgetExceeded,
    ChatRequest,
    RetryPolicy,
    SamplingParams,
    load_backend,
)
from neuroscribe.backends.openai_backend import align_echo_logprobs
from neuroscribe.backends.remote import EndpointPool
from neuroscribe.cache import Cache
from neuroscribe.specs import Spec

# ------------------------------------------------------------------------------------- specs


def test_parse_spec_reads_every_kind():
    assert Spec.parse("hf:smollm2-135m-instruct") == Spec("hf", "smollm2-135m-instruct", ())
    assert Spec.parse("openai:gpt-4o-mini").model == "gpt-4o-mini"
    spec = Spec.parse("openai:smollm2@http://127.0.0.1:8000/v1, http://127.0.0.1:8001/v1")
    assert spec.base_urls == ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1")
    assert Spec.parse("openai:ft:gpt-4o-mini:org::abc").model == "ft:gpt-4o-mini:org::abc"  # colons in names
    assert Spec.parse("anthropic:claude-3-5-haiku-latest").kind == "anthropic"
    assert Spec.parse("vllm:/models/llama").model == "/models/llama"


@pytest.mark.parametrize("bad", ["", "smollm2", "gpt:x", "hf:", "openai:m@", "openai:m@ftp://host"])
def test_bad_spec_gives_one_clear_error(bad):
    with pytest.raises(ValueError, match="backend spec"):
        Spec.parse(bad)


def test_load_backend_rejects_http_options_for_local_models(tiny_llama):
    with pytest.raises(ValueError, match="only apply to HTTP backends"):
        load_backend(f"hf:{tiny_llama}", base_urls=["http://127.0.0.1:1/v1"])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_says_how_to_install():
    with pytest.raises(ImportError, match="pip install 'neuroscribe\\[vllm\\]'"):
        load_backend("vllm:smollm2-135m-instruct")


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(stop="\n").stop == ("\n",)
    with pytest.raises(ValueError, match="messages\\[0\\]"):
        ChatRequest(({"role": "robot", "content": "hi"},))


# ------------------------------------------------------------------------ local transformers


@pytest.fixture(scope="module")
def tiny_backend(tiny_llama):
    return load_backend(f"hf:{tiny_llama}", batch_size=2)


def _requests(n, temperature=1.0, max_tokens=12, seed=7):
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
    return [ChatRequest.user(f"Tell me about item {i % 2}.", params, sample_index=i) for i in range(n)]


def test_local_samples_do_not_depend_on_their_batch(tiny_backend):
    reqs = _requests(5)
    together = [c.text for c in tiny_backend.generate(reqs)]  # batches of 2, sorted by length
    alone = [tiny_backend.generate([r])[0].text for r in reqs]
    reversed_ = [c.text for c in tiny_backend.generate(reqs[::-1])][::-1]
    assert together == alone == reversed_
    assert len(set(together)) > 1  # the sample index really changes the sample


def test_local_greedy_ignores_seed_and_honours_max_tokens(tiny_backend):
    a = tiny_backend.generate(_requests(2, temperature=0.0, max_tokens=5, seed=1))
    b = tiny_backend.generate(_requests(2, temperature=0.0, max_tokens=5, seed=99))
    assert [c.text for c in a] == [c.text for c in b]
    for c in a:
        assert 1 <= c.tokens_out <= 5 and c.tokens_in > 0
        assert c.finish_reason == ("length" if c.tokens_out == 5 else "stop")


def test_local_stop_string_cuts_the_text(tiny_backend):
    req = _requests(1, temperature=0.0, max_tokens=20)[0]
    full = tiny_backend.generate([req])[0].text
    assert len(full) >= 4
    stop = full[2:4]
    cut = tiny_backend.generate([ChatRequest(req.messages, SamplingParams(0.0, 20, stop=(stop,)))])[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"


def test_local_prompt_logprobs_match_a_direct_forward(tiny_backend):
    prompt = "The river flows past the old mill."
    positions = tiny_backend.prompt_logprobs(prompt, top_k=4)
    ids = tiny_backend.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert "".join(p.token for p in positions) == prompt
    assert [p.offset for p in positions] == [prompt.find(p.token, p.offset) for p in positions]
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_backend.lm(input_ids=torch.tensor([ids])).logits[0], -1)
    assert positions[0].top is None and positions[0].logprob is None
    for i in range(1, len(ids)):
        assert positions[i].logprob == pytest.approx(float(logprobs[i - 1, ids[i]]), abs=1e-4)
        values = list(positions[i].top.values())
        assert 1 <= len(values) <= 4 and values == sorted(values, reverse=True)  # ids decoding alike merge
        assert values[0] == pytest.approx(float(logprobs[i - 1].max()), abs=1e-4)


def test_local_cache_hit_never_touches_the_model(tiny_llama, tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    backend = load_backend(f"hf:{tiny_llama}", cache, stage="explain")
    first = backend.generate(_requests(3))
    backend.lm = None  # any model call now fails loudly
    second = backend.generate(_requests(3))
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached for c in second) and not any(c.cached for c in first)
    usage = cache.usage("explain")
    assert (usage.calls, usage.cached_hits, usage.usd) == (3, 3, 0.0)
    assert usage.tokens_out == sum(c.tokens_out for c in first)


# ------------------------------------------------------------------- shared remote machinery


def test_endpoint_pool_prefers_idle_urls_and_benches_failures():
    pool = EndpointPool(["a", "b", "c"], bench_seconds=60)
    first = [pool.acquire() for _ in range(3)]
    assert sorted(first) == ["a", "b", "c"]  # least busy first: one each
    pool.release("a", failed=True)
    assert pool.acquire() != "a"  # benched after failing
    assert pool.acquire(avoid="b") != "b"


def test_budget_refuses_before_the_limit_and_settles_real_costs():
    budget = Budget(max_usd=1.0, max_calls=3)
    budget.reserve(0.4)
    budget.reserve(0.4)
    with pytest.raises(BudgetExceeded, match="max_usd"):
        budget.reserve(0.4)  # 0.4 + 0.4 reserved + 0.4 > 1.0
    budget.settle(0.4, 0.1)
    budget.reserve(0.4)
    with pytest.raises(BudgetExceeded, match="max_calls"):
        budget.reserve(0.0)
    assert budget.calls == 1 and budget.spent_usd == pytest.approx(0.1)


def test_retry_delay_grows_and_honours_retry_after():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    assert all(0 <= policy.delay(0) <= 1.0 for _ in range(50))
    assert max(policy.delay(5) for _ in range(200)) <= 8.0
    assert policy.delay(0, retry_after=3.0) >= 3.0


def test_echo_alignment_shifts_llama_cpp_entries_by_one():
    prompt = "ab cd"
    # llama.cpp style: entry i is the distribution AFTER token i; the generated token is not listed.
    nxt = align_echo_logprobs(prompt, ["ab", " cd"], [0, 2], [None, -3.0], [None, {"!": -0.1, " cd": -3.0}])
    assert nxt[0].top is None and nxt[1].top is None  # entry 0 (predicting token 1) was nulled by the server
    # OpenAI/vLLM style: the generated token comes back as an extra entry past the prompt.
    same = align_echo_logprobs(
        prompt, ["ab", " cd", "!"], [0, 2, 5], [None, -2.0, -0.5], [None, {" cd": -2.0, " ef": -2.5}, {"!": -0.5}]
    )
    assert len(same) == 2 and same[1].top == {" cd": -2.0, " ef": -2.5} and same[1].logprob == -2.0
    three = align_echo_logprobs(
        "a b c",
        ["a", " b", " c"],
        [0, 1, 3],
        [None, -1.0, -2.0],
        [None, {" c": -0.2, " b": -1.0}, {"!": -0.3, " c": -2.0}],
    )
    assert three[2].top == {" c": -0.2, " b": -1.0} and three[2].logprob == -0.2


# ------------------------------------------------------------------- Anthropic, recorded double


def _anthropic_double(script):
    """httpx2 transport answering with recorded Anthropic Messages API responses, in order."""
    import httpx2

    seen = []

    def handler(request):
        seen.append({"headers": dict(request.headers), "body": json.loads(request.content)})
        status, payload = script[min(len(seen) - 1, len(script) - 1)]
        headers = {"retry-after": "0"} if status == 429 else {}
        return httpx2.Response(status, json=payload, headers=headers)

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler)), seen


_OK = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "Sailing words."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 31, "output_tokens": 4},
}
_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
_RATE = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}}


def test_anthropic_retries_then_answers_and_accounts_cost(monkeypatch, tmp_path):
    """Test double: recorded Messages API responses via httpx2.MockTransport (no API reachable here)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-SECRET-123456")
    client, seen = _anthropic_double([(429, _RATE), (529, _OVERLOADED), (200, _OK)])
    cache = Cache(tmp_path / "c.sqlite")
    backend = load_backend(
        "anthropic:claude-3-5-haiku-latest",
        cache,
        stage="explain",
        http_client=client,
        retry=RetryPolicy(base_delay=0.01),
    )
    request = ChatRequest.user("What is this feature?", SamplingParams(0.5, 64), system="You explain features.")
    out = backend.generate([request])[0]
    assert out.text == "Sailing words." and (out.tokens_in, out.tokens_out) == (31, 4)
    assert len(seen) == 3  # two retried failures, then the answer
    body = seen[-1]["body"]
    assert body["system"] == "You explain features." and body["messages"] == [
        {"role": "user", "content": "What is this feature?"}
    ]
    assert body["temperature"] == 0.5 and body["max_tokens"] == 64
    sent = seen[-1]["headers"]
    assert "sk-ant-test-SECRET-123456" in sent.get("x-api-key", "") + sent.get("authorization", "")  # env, at call time
    usage = cache.usage("explain")
    assert usage.calls == 1 and usage.usd == pytest.approx((31 * 0.80 + 4 * 4.00) / 1e6)
    assert b"SECRET" not in (tmp_path / "c.sqlite").read_bytes()


def test_anthropic_budget_stops_before_sending(monkeypatch):
    """Test double: recorded Messages API responses via httpx2.MockTransport (no API reachable here)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-SECRET-123456")
    client, seen = _anthropic_double([(200, _OK)])
    backend = load_backend("anthropic:claude-3-5-haiku-latest", http_client=client, budget=Budget(max_usd=1e-4))
    with pytest.raises(BudgetExceeded, match="max_usd"):
        backend.generate([ChatRequest.user("x" * 3000, SamplingParams(max_tokens=1000))])
    assert seen == []


def test_anthropic_errors_never_show_the_key(monkeypatch):
    """Test double: a recorded 401 whose message echoes the key, to prove errors are scrubbed."""
    secret = "sk-ant-test-SECRET-abcdef"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    denied = {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {secret}"}}
    client, seen = _anthropic_double([(401, denied)])
    backend = load_backend("anthropic:claude-3-5-haiku-latest", http_client=client)
    with pytest.raises(BackendError) as info:
        backend.generate([ChatRequest.user("hi")])
    assert len(seen) == 1  # 401 is not retried
    assert "authentication_error" in str(info.value) and secret not in str(info.value)
    assert secret not in repr(backend)


def test_anthropic_without_a_key_fails_clearly(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    backend = load_backend("anthropic:claude-3-5-haiku-latest")  # constructing needs no key
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        backend.generate([ChatRequest.user("hi")])


# ---------------------------------------------------------------------------------- vLLM (GPU)


@pytest.mark.gpu
def test_vllm_generates_and_returns_prompt_logprobs():
    pytest.importorskip("vllm")
    backend = load_backend("vllm:smollm2-135m-instruct", gpu_memory_utilization=0.3)
    reqs = [ChatRequest.user("Name a colour.", SamplingParams(1.0, 8, seed=3), sample_index=i) for i in range(3)]
    out = backend.generate(reqs)
    assert [c.text for c in backend.generate(reqs[::-1])][::-1] == [c.text for c in out]
    positions = backend.prompt_logprobs("The cat sat on the mat.", top_k=3)
    assert "".join(p.token for p in positions) == "The cat sat on the mat."
    assert all(math.isfinite(p.logprob) for p in positions[1:])
