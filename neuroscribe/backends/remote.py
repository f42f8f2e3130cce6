"""Machinery shared by the HTTP backends (OpenAI-compatible, Anthropic).

- a concurrency limit (one semaphore per `generate` call),
- retries with exponential backoff and full jitter on 429 / 5xx / timeouts / connection errors
  (honouring a server's Retry-After), never on other 4xx,
- a per-run `Budget` (max USD and/or max calls) checked BEFORE each request is sent, with a pessimistic
  cost estimate reserved until the real usage comes back; every request sent counts as a call, retries
  and known failures included (a failure costs no USD, but it was a request),
- several base URLs: each call goes to the least busy healthy URL (ties in round-robin order); a URL
  that failed is benched for a while, so the retry lands on another one.
- a reply without text (empty, null, not a string) is a retryable `BadReply`, never cached.
API keys are read from the environment at call time and refused over plain http to a host that is not
loopback, judged on the URL the SDK really uses (spec URL, else OPENAI_BASE_URL / ANTHROPIC_BASE_URL);
known secrets are scrubbed from error text and from replies before caching (a server may echo them).

Servers and the cache: the cache keys on kind, model and request, never the URL, so a resumed run whose
server URL changed may mix two servers' answers under one model name. Allowed (the same model behind
another URL is a hit by design) and recorded: explain's meta keeps every run's `server_urls()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from neuroscribe.backends.base import Backend, BackendError, BudgetExceeded, ChatRequest, Completion, PositionLogprobs


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5  # seconds; attempt n waits up to base_delay * 2**n (full jitter)
    max_delay: float = 30.0
    timeout: float = 120.0  # per request, seconds

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * 2**attempt)
        wait = random.uniform(0, cap)
        return min(self.max_delay, max(wait, retry_after or 0.0))


class Budget:
    """A run's spending limit, shared by every backend given the same object (thread-safe).

    Before a call is sent, `reserve` adds a pessimistic estimate (all of max_tokens generated) and
    refuses with BudgetExceeded if spent + reserved + estimate would pass the limit; `settle`
    replaces the estimate with the real cost.
    """

    def __init__(self, max_usd: float | None = None, max_calls: int | None = None):
        self.max_usd = max_usd
        self.max_calls = max_calls
        self.spent_usd = 0.0
        self.calls = 0
        self._reserved_usd = 0.0
        self._reserved_calls = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Budget(max_usd={self.max_usd}, max_calls={self.max_calls}, spent_usd={self.spent_usd:.4f}, "
            f"calls={self.calls})"
        )

    def reserve(self, estimate_usd: float) -> None:
        with self._lock:
            if self.max_calls is not None and self.calls + self._reserved_calls + 1 > self.max_calls:
                raise BudgetExceeded(
                    f"budget: max_calls={self.max_calls} reached ({self.calls} made, {self._reserved_calls} in flight)"
                )
            if self.max_usd is not None and self.spent_usd + self._reserved_usd + estimate_usd > self.max_usd:
                raise BudgetExceeded(
                    f"budget: max_usd={self.max_usd} would be exceeded (spent {self.spent_usd:.4f}, "
                    f"in flight {self._reserved_usd:.4f}, next call up to {estimate_usd:.4f})"
                )
            self._reserved_calls += 1
            self._reserved_usd += estimate_usd

    def settle(self, estimate_usd: float, actual_usd: float | None) -> None:
        """A sent request is over: it counts as a call whatever its outcome; `actual_usd` None (unknown)
        keeps the pessimistic estimate, 0.0 is a request known to have cost nothing."""
        with self._lock:
            self._reserved_calls -= 1
            self._reserved_usd -= estimate_usd
            self.calls += 1
            self.spent_usd += actual_usd if actual_usd is not None else estimate_usd


class EndpointPool:
    """Base URLs with in-flight counts; picks the least busy healthy one, round-robin on ties."""

    def __init__(self, urls: Sequence[str], bench_seconds: float = 5.0):
        if not urls:
            raise ValueError("EndpointPool needs at least one base URL")
        self.urls = list(urls)
        self.in_flight = {u: 0 for u in self.urls}
        self.sent = {u: 0 for u in self.urls}
        self.failures = {u: 0 for u in self.urls}
        self._benched_until = {u: 0.0 for u in self.urls}
        self._bench_seconds = bench_seconds
        self._turn = 0

    def acquire(self, avoid: str | None = None) -> str:
        now = time.monotonic()
        healthy = [u for u in self.urls if self._benched_until[u] <= now and u != avoid]
        if not healthy:  # everything benched: take the one that recovers first
            healthy = sorted(self.urls, key=lambda u: (u == avoid, self._benched_until[u]))[:1]
        order = self.urls[self._turn :] + self.urls[: self._turn]
        url = min(healthy, key=lambda u: (self.in_flight[u], order.index(u)))
        self._turn = (self.urls.index(url) + 1) % len(self.urls)
        self.in_flight[url] += 1
        self.sent[url] += 1
        return url

    def release(self, url: str, failed: bool = False) -> None:
        self.in_flight[url] -= 1
        if failed:
            self.failures[url] += 1
            self._benched_until[url] = time.monotonic() + self._bench_seconds
        else:
            self._benched_until[url] = 0.0


class BadReply(ValueError):
    """A 200 reply without usable text (empty, null, or not a string): retried like a 5xx, never cached."""


def reply_text(content: Any, where: str) -> str:
    """The text of a reply, or BadReply: an empty answer is a server fault, not an explanation."""
    if not isinstance(content, str):
        raise BadReply(f"{where}: reply content is {type(content).__name__}, not text")
    if not content.strip():
        raise BadReply(f"{where}: reply content is empty")
    return content


def is_garbage_reply(exc: BaseException) -> bool:
    """A reply the client could not read: invalid JSON, JSON without the fields asked for, or no text."""
    import json

    names = {type(e).__name__ for e in type(exc).__mro__}
    errors = (json.JSONDecodeError, KeyError, IndexError, AttributeError, TypeError, BadReply)
    return isinstance(exc, errors) or bool(names & {"APIResponseValidationError", "JSONDecodeError", "ValidationError"})


def key_travels_safely(url: str) -> bool:
    """https, or plain http to a loopback address (the key never leaves this machine)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_url(url: str) -> str:
    """A URL without user:password@ (safe to print and record)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def read_api_key(env_var: str) -> str | None:
    value = os.environ.get(env_var)
    return value.strip() if value and value.strip() else None


SECRET_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")


def known_secrets() -> list[str]:
    """Every secret this process knows (API keys, Hub and wandb tokens): none may reach a file."""
    return [k for k in (read_api_key(name) for name in SECRET_ENV) if k]


def redact(text: str, secrets: Sequence[str | None]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def run_sync(coro_factory: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine from sync code, also when the caller already runs an event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro_factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class RemoteBackend(Backend):
    """A Backend that talks HTTP: subclasses provide clients, the request body and error taxonomy."""

    env_key: str = ""
    env_base_url: str = ""  # the variable the SDK reads a base URL from when none is given
    default_concurrency = 8

    def configure(
        self,
        *,
        base_urls: Sequence[str] | None = None,
        max_concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        budget: Budget | None = None,
        allow_plain_http: bool = False,
    ) -> None:
        self.base_urls = [u.rstrip("/") for u in base_urls] if base_urls else [None]
        self.max_concurrency = max_concurrency or self.default_concurrency
        self.retry = retry or RetryPolicy()
        self.budget = budget
        self.allow_plain_http = allow_plain_http
        self.pool = EndpointPool([u or "default" for u in self.base_urls])
        if budget is not None and budget.max_usd is not None and self.prices.price(self.kind, self.model) is None:
            raise ValueError(
                f"{self.spec}: a USD budget needs a price for this model; add it to the price table "
                "(prices={'" + self.kind + "': {'" + self.model + "': {'input': ..., 'output': ...}}})"
            )

    # -- hooks for subclasses -------------------------------------------------------------------
    def make_client(self, base_url: str | None, api_key: str | None) -> Any:
        raise NotImplementedError

    async def send_chat(self, client: Any, request: ChatRequest) -> Completion:
        raise NotImplementedError

    def is_retryable(self, exc: BaseException) -> bool:
        """429 / 408 / 409 / 5xx, timeouts, connection errors and garbage replies (a 200 whose body
        is not the JSON asked for) are retried; any other 4xx is final."""
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            return status in (408, 409, 429) or status >= 500
        return isinstance(exc, (asyncio.TimeoutError, ConnectionError)) or is_garbage_reply(exc)

    def known_failed(self, exc: BaseException) -> bool:
        """Whether the server certainly did no (billable) work: an error status or a refused connection.
        A timeout or a garbage reply may have cost as much as a success, so it stays charged."""
        return isinstance(getattr(exc, "status_code", None), int) or isinstance(exc, ConnectionError)

    def retry_after(self, exc: BaseException) -> float | None:
        response = getattr(exc, "response", None)
        try:
            return float(response.headers.get("retry-after"))  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            return None

    # -- shared machinery -----------------------------------------------------------------------
    def estimate_usd(self, request: ChatRequest) -> float:
        """Pessimistic: ~3 characters per prompt token, every allowed token generated."""
        chars = sum(len(m["content"]) for m in request.messages)
        return self.cost(chars // 3 + 16, request.params.max_tokens) or 0.0

    def server_urls(self) -> list[str]:
        """The base URLs calls go to (no credentials): spec URLs, else the SDK's variable, else its default."""
        env = os.environ.get(self.env_base_url, "").strip() if self.env_base_url else ""
        return [public_url(u or env) if (u or env) else f"{self.kind} default" for u in self.base_urls]

    def _clients(self) -> dict[str, Any]:
        key = read_api_key(self.env_key)
        clients = {name: self.make_client(url, key) for name, url in zip(self.pool.urls, self.base_urls)}
        if key and not self.allow_plain_http:
            # the URL the SDK will use, so OPENAI_BASE_URL / ANTHROPIC_BASE_URL are judged too
            used = [str(getattr(c, "base_url", None) or u) for c, u in zip(clients.values(), self.base_urls)]
            exposed = [u for u in used if not key_travels_safely(u)]
            if exposed:
                raise BackendError(
                    f"{self.spec}: refusing to send {self.env_key} in clear text to {public_url(exposed[0])} "
                    "(plain http to a host that is not this machine); use https, unset the key, "
                    "or pass --allow-plain-http"
                )
        return clients

    async def call(self, clients: dict[str, Any], send: Callable[[Any], Awaitable[Any]], estimate_usd: float) -> Any:
        """One logical call: attempts with backoff, moving off failed URLs. Every attempt is a request
        the budget counts (reserved before it is sent, a call once it is over); one that is not known to
        have failed stays charged at its estimate in USD, because the server may have done the work."""
        last: BaseException | None = None
        avoid, url = None, None
        for attempt in range(self.retry.max_attempts):
            if self.budget is not None:
                self.budget.reserve(estimate_usd)
            url = self.pool.acquire(avoid)
            try:
                result = await asyncio.wait_for(send(clients[url]), self.retry.timeout)
            except Exception as exc:  # noqa: BLE001 - classified just below
                retryable = self.is_retryable(exc)
                self.pool.release(url, failed=retryable)  # a 4xx says nothing about the URL's health
                if self.budget is not None:  # a request was sent: it counts, and costs only if it may have
                    self.budget.settle(estimate_usd, 0.0 if self.known_failed(exc) else None)
                if not retryable:
                    raise BackendError(self._describe(exc, url)) from None  # no chain: SDK errors carry requests
                last, avoid = exc, url if len(self.pool.urls) > 1 else None
                await asyncio.sleep(self.retry.delay(attempt, self.retry_after(exc)))
                continue
            self.pool.release(url)
            if self.budget is not None:
                self.budget.settle(estimate_usd, self.cost(*_token_counts(result)))
            return result
        raise BackendError(f"gave up after {self.retry.max_attempts} attempts; last error: {self._describe(last, url)}")

    def _describe(self, exc: BaseException | None, url: str | None) -> str:
        text = f"{self.spec} via {public_url(url) if url and '://' in url else url}: {type(exc).__name__}: {exc}"
        return redact(text, known_secrets())

    def _generate(self, requests: Sequence[ChatRequest], on_done: Callable[[int, Completion], None]) -> None:
        def done(i: int, completion: Completion) -> None:
            # a server may echo our key (e.g. the Authorization header): never cache or write it
            on_done(i, dataclasses.replace(completion, text=redact(completion.text, known_secrets())))

        self._send_all(requests, self.send_chat, self.estimate_usd, done)

    def _prompt_logprobs_many(self, prompts: Sequence[str], top_k: int, on_done) -> None:
        self._send_all(
            prompts,
            lambda client, prompt: self.send_prompt_logprobs(client, prompt, top_k),
            lambda prompt: self.cost(len(prompt) // 3 + 16, 1) or 0.0,
            lambda j, result: on_done(j, *result),
        )

    def _send_all(
        self,
        items: Sequence[Any],
        send: Callable[[Any, Any], Awaitable[Any]],
        estimate_usd: Callable[[Any], float],
        on_done: Callable[[int, Any], None],
    ) -> None:
        """`send(client, item)` for every item, at most `max_concurrency` at once, each one logical `call`;
        `on_done(i, result)` as each finishes. Raises the first failure once all are over (`_raise_first`)."""

        async def main() -> None:
            clients = self._clients()
            gate = asyncio.Semaphore(self.max_concurrency)

            async def one(i: int, item: Any) -> None:
                async with gate:
                    result = await self.call(clients, lambda c: send(c, item), estimate_usd(item))
                on_done(i, result)

            try:
                outcomes = await asyncio.gather(*(one(i, x) for i, x in enumerate(items)), return_exceptions=True)
            finally:
                await _close_all(clients)
            _raise_first(outcomes)

        run_sync(main)

    async def send_prompt_logprobs(self, client: Any, prompt: str, top_k: int) -> tuple[list[PositionLogprobs], int]:
        raise NotImplementedError(f"{self.spec}: this backend cannot return prompt logprobs")


def _raise_first(outcomes: Sequence[Any]) -> None:
    """Everything that finished is already cached; report a budget stop first, else the first failure."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        budget = [e for e in errors if isinstance(e, BudgetExceeded)]
        raise (budget or errors)[0]


def _token_counts(result: Any) -> tuple[int, int]:
    if isinstance(result, Completion):
        return result.tokens_in, result.tokens_out
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int):
        return result[1], 0
    return 0, 0


async def _close_all(clients: dict[str, Any]) -> None:
    for client in clients.values():
        close = getattr(client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                await close()
