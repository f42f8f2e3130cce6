"""The one interface every LLM backend implements, and the cache plumbing they all share.

A backend turns a batch of `ChatRequest`s into `Completion`s (order preserved) and, where it can,
returns per-token prompt logprobs. `Backend.generate` looks every request up in the disk cache first;
subclasses only ever see the misses and report each finished call through `on_done`, which stores it
at once (so a killed run keeps everything that completed).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from neuroscribe.cache import Cache, cache_key
from neuroscribe.costs import PriceTable, resolve_prices


class BackendError(RuntimeError):
    """A backend call failed for good (after retries, or a non-retryable error)."""


class BudgetExceeded(BackendError):
    """The next call would break the run's budget; it was not sent."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int | None = None  # base seed; each sample uses seed + sample_index (see `sample_seed`)
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))


def sample_seed(params: SamplingParams, sample_index: int) -> int | None:
    """The seed one sample is drawn with: it depends on the request only, never on its batch."""
    return None if params.seed is None else params.seed + sample_index


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict, ...]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]
    params: SamplingParams = SamplingParams()
    sample_index: int = 0  # k-th sample of the same prompt (best-of-k); part of the cache key

    def __post_init__(self) -> None:
        msgs = tuple(dict(m) for m in self.messages)
        for i, m in enumerate(msgs):
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise ValueError(f"ChatRequest.messages[{i}] needs a role (system/user/assistant) and str content")
        object.__setattr__(self, "messages", msgs)

    @classmethod
    def user(
        cls, text: str, params: SamplingParams = SamplingParams(), sample_index: int = 0, system: str | None = None
    ):
        msgs = ({"role": "system", "content": system},) if system else ()
        return cls(msgs + ({"role": "user", "content": text},), params, sample_index)


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    cached: bool = False
    finish_reason: str = "stop"  # "stop" (EOS or stop string) | "length" | "error"
    error: str = ""  # why the call failed for good (generate(keep_failures=True) only); never cached


@dataclass(frozen=True)
class PositionLogprobs:
    """One prompt token, described AT its own position.

    `logprob` is log P(token | everything before it) and `top` maps the top-k candidate strings for
    this position (given everything before it) to their logprobs. Both are None for the first token
    (nothing predicts it) and wherever the backend could not provide them.
    """

    offset: int  # character offset of the token in the prompt
    token: str
    logprob: float | None = None
    top: dict[str, float] | None = field(default=None, hash=False, compare=True)


def _cached_completion(hit: dict) -> Completion | None:
    """A cached completion; one without text (cached by an older version from a bad reply) is a miss."""
    return Completion(**{**hit, "cached": True}) if isinstance(hit.get("text"), str) else None


def request_payload(request: ChatRequest) -> dict[str, Any]:
    return {
        "messages": [dict(m) for m in request.messages],
        "params": dataclasses.asdict(request.params),
        "sample_index": request.sample_index,
    }


class Backend(ABC):
    """An LLM that answers chat requests in batches (order preserved), through the disk cache."""

    kind: ClassVar[str] = ""
    supports_logprobs: ClassVar[bool] = False

    def __init__(self, model: str, cache: Cache | None = None, stage: str = "default", prices=None, **options):
        """The fields every backend has; the options of one kind (dtype, base_urls, ...) go to `configure`."""
        self.model = model
        self.cache = cache
        self.stage = stage
        self.prices: PriceTable = resolve_prices(prices)
        self.configure(**options)

    def configure(self) -> None:  # noqa: B027 - a no-op default: kinds without options keep it
        """Set up what one kind needs beyond the shared fields; subclasses take their options here, keyword-only
        (the default has none, so an unknown option fails)."""

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.model}"

    def __repr__(self) -> str:  # never shows keys, clients or URLs with credentials
        return f"{type(self).__name__}({self.spec!r})"

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        return self.prices.cost(self.kind, self.model, tokens_in, tokens_out)

    def _lookup(
        self, keys: Sequence[str], stage: str, decode: Callable[[Any], Any]
    ) -> tuple[list, dict[str, list[int]]]:
        """Cache hits decoded in place (None where missing), and key -> positions still to compute;
        identical requests in one batch are computed once. A hit `decode` rejects (None) is a miss."""
        results: list = [None] * len(keys)
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key in pending:
                pending[key].append(i)
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            value = decode(hit) if hit is not None else None
            if value is not None:
                results[i] = value
                self.cache.record_hit(key, kind=self.kind, model=self.model, stage=stage)
            else:
                pending[key] = [i]
        return results, pending

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self, requests: Sequence[ChatRequest], stage: str | None = None, keep_failures: bool = False
    ) -> list[Completion]:
        """Completions in request order. A request that fails for good raises BackendError (after every
        other request finished and was cached); with `keep_failures` it comes back as a Completion with
        `error` set and finish_reason "error" instead. A budget stop always raises."""
        stage = stage or self.stage
        keys = [cache_key(self.kind, self.model, request_payload(r)) for r in requests]
        results, pending = self._lookup(keys, stage, _cached_completion)
        todo = list(pending)

        def on_done(j: int, completion: Completion) -> None:
            key = todo[j]
            if self.cache is not None:
                value = dataclasses.asdict(completion)
                value.pop("cached")
                self.cache.put(
                    key,
                    value,
                    kind=self.kind,
                    model=self.model,
                    stage=stage,
                    tokens_in=completion.tokens_in,
                    tokens_out=completion.tokens_out,
                    usd=self.cost(completion.tokens_in, completion.tokens_out),
                )
            for i in pending[key]:
                results[i] = completion

        failure = ""
        if todo:
            try:
                self._generate([requests[pending[k][0]] for k in todo], on_done)
            except BackendError as err:
                if not keep_failures or isinstance(err, BudgetExceeded):
                    raise
                failure = str(err)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing and not keep_failures:
            raise BackendError(f"{self.spec}: no completion for request(s) {missing[:10]}")
        for i in missing:
            results[i] = Completion("", finish_reason="error", error=failure or f"{self.spec}: no completion")
        return results  # type: ignore[return-value]

    @abstractmethod
    def _generate(self, requests: Sequence[ChatRequest], on_done: Callable[[int, Completion], None]) -> None:
        """Answer every request; call on_done(i, completion) as soon as request i is answered."""

    # -- prompt logprobs ----------------------------------------------------------------------
    def prompt_logprobs(self, prompt: str, top_k: int = 10, stage: str | None = None) -> list[PositionLogprobs]:
        """Per prompt token: its offset, text, logprob and the top-k alternatives AT that position."""
        return self.prompt_logprobs_batch([prompt], top_k, stage)[0]

    def prompt_logprobs_batch(
        self, prompts: Sequence[str], top_k: int = 10, stage: str | None = None
    ) -> list[list[PositionLogprobs]]:
        """`prompt_logprobs` for many prompts (order preserved), through the cache, sent concurrently where possible."""
        if not self.supports_logprobs:
            raise NotImplementedError(f"{self.spec}: this backend cannot return prompt logprobs")
        if top_k < 1:
            raise ValueError(f"prompt_logprobs: top_k must be >= 1, got {top_k}")
        stage = stage or self.stage
        keys = [
            cache_key(self.kind, self.model, {"prompt_logprobs": p, "top_k": top_k, **self.logprobs_key_extra()})
            for p in prompts
        ]
        results, pending = self._lookup(keys, stage, lambda hit: [PositionLogprobs(**p) for p in hit])
        todo = list(pending)

        def on_done(j: int, positions: list[PositionLogprobs], tokens_in: int) -> None:
            key = todo[j]
            if self.cache is not None:
                self.cache.put(
                    key,
                    [dataclasses.asdict(p) for p in positions],
                    kind=self.kind,
                    model=self.model,
                    stage=stage,
                    tokens_in=tokens_in,
                    tokens_out=0,
                    usd=self.cost(tokens_in, 0),
                )
            for i in pending[key]:
                results[i] = positions

        if todo:
            self._prompt_logprobs_many([prompts[pending[k][0]] for k in todo], top_k, on_done)
        return results  # type: ignore[return-value]

    def logprobs_key_extra(self) -> dict:
        """Settings that change what `prompt_logprobs` returns, so they belong in its cache key."""
        return {}

    def _prompt_logprobs_many(self, prompts: Sequence[str], top_k: int, on_done) -> None:
        for j, prompt in enumerate(prompts):
            on_done(j, *self._prompt_logprobs(prompt, top_k))

    def _prompt_logprobs(self, prompt: str, top_k: int) -> tuple[list[PositionLogprobs], int]:
        """(positions, prompt token count) for one prompt; backends with logprobs implement this."""
        raise NotImplementedError(f"{self.spec}: this backend cannot return prompt logprobs")

    def close(self) -> None:  # noqa: B027 - a no-op default, not an abstract hook
        """Free engines or connections; the default has nothing to free."""
