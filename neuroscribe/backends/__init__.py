"""LLM backends behind one interface; `load_backend(spec)` picks one from a spec string.

Specs:
  hf:PATH_OR_ID_OR_BUNDLED_NAME          local transformers (e.g. hf:smollm2-135m-instruct)
  openai:MODEL                           api.openai.com (OPENAI_API_KEY)
  openai:MODEL@URL[,URL...]              OpenAI-compatible servers, e.g. openai:smollm2@http://127.0.0.1:8000/v1
  anthropic:MODEL                        Anthropic Messages API (ANTHROPIC_API_KEY)
  vllm:MODEL                             vLLM offline engine (optional, GPU)
  patterns:v1                            no LLM: template phrases over the prompt's marked tokens
"""

from __future__ import annotations

from dataclasses import dataclass

from neuroscribe.backends.base import (
    Backend,
    BackendError,
    ChatRequest,
    Completion,
    PositionLogprobs,
    SamplingParams,
    sample_seed,
)
from neuroscribe.backends.remote import Budget, BudgetExceeded, RetryPolicy
from neuroscribe.cache import Cache
from neuroscribe.configs import CallLimits

__all__ = [
    "Backend",
    "BackendError",
    "Budget",
    "BudgetExceeded",
    "ChatRequest",
    "Completion",
    "PositionLogprobs",
    "RetryPolicy",
    "SamplingParams",
    "BackendSpec",
    "CallLimits",
    "load_backend",
    "parse_spec",
    "sample_seed",
]

KINDS = ("hf", "openai", "anthropic", "vllm", "patterns")
_REMOTE_OPTS = {"base_urls", "max_concurrency", "retry", "budget", "allow_plain_http"}


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    model: str
    base_urls: tuple[str, ...] = ()


def parse_spec(spec: str) -> BackendSpec:
    """'kind:model[@url,url]' -> BackendSpec, with one error that says what a spec looks like."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    example = (
        "e.g. hf:smollm2-135m-instruct, openai:gpt-4o-mini, openai:MODEL@http://127.0.0.1:8000/v1, "
        "anthropic:MODEL, vllm:MODEL, patterns:v1"
    )
    if not sep or kind not in KINDS or not rest.strip():
        raise ValueError(f"backend spec {spec!r}: expected KIND:MODEL with KIND one of {', '.join(KINDS)} ({example})")
    model, urls = rest.strip(), ()
    if "@" in model and kind == "openai":
        model, _, url_text = model.rpartition("@")
        urls = tuple(u.strip() for u in url_text.split(",") if u.strip())
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if not model or not urls or bad:
            raise ValueError(
                f"backend spec {spec!r}: after '@' give base URLs like http://127.0.0.1:8000/v1 ({example})"
            )
    return BackendSpec(kind, model, urls)


def load_backend(
    spec: str, cache: Cache | None = None, limits: CallLimits | None = None, budget: Budget | None = None, **opts
) -> Backend:
    """Build the backend a spec names. `opts` go to its constructor (stage, prices, ...); `limits` (and a
    shared `budget`) apply to HTTP backends only and are ignored by local ones."""
    parsed = parse_spec(spec)
    if parsed.kind in ("openai", "anthropic"):
        if limits is not None:
            opts = {**limits.options(budget), **opts}
        elif budget is not None:
            opts = {"budget": budget, **opts}
    if parsed.kind == "patterns":
        from neuroscribe.backends.patterns import PatternBackend

        return PatternBackend(parsed.model, cache, **opts)
    if parsed.kind in ("hf", "vllm"):
        stray = _REMOTE_OPTS & set(opts)
        if stray:
            raise ValueError(f"backend spec {spec!r}: {sorted(stray)} only apply to HTTP backends")
    if parsed.kind == "hf":
        from neuroscribe.backends.local import TransformersBackend

        return TransformersBackend(parsed.model, cache, **opts)
    if parsed.kind == "openai":
        from neuroscribe.backends.openai_backend import OpenAIBackend

        if parsed.base_urls:
            if opts.get("base_urls"):
                raise ValueError(f"backend spec {spec!r}: give base URLs in the spec or as base_urls=, not both")
            opts["base_urls"] = list(parsed.base_urls)
        return OpenAIBackend(parsed.model, cache, **opts)
    if parsed.kind == "anthropic":
        from neuroscribe.backends.anthropic_backend import AnthropicBackend

        return AnthropicBackend(parsed.model, cache, **opts)
    from neuroscribe.backends.vllm_backend import VLLMBackend

    return VLLMBackend(parsed.model, cache, **opts)
