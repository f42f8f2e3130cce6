"""LLM backends behind one interface; `load_backend(spec)` picks one from a spec string.

Specs:
  hf:PATH_OR_ID_OR_BUNDLED_NAME          local transformers (e.g. hf:smollm2-135m-instruct)
  openai:MODEL                           api.openai.com (OPENAI_API_KEY)
  openai:MODEL@URL[,URL...]              OpenAI-compatible servers, e.g. openai:smollm2@http://127.0.0.1:8000/v1
  anthropic:MODEL                        Anthropic Messages API (ANTHROPIC_API_KEY)
  vllm:MODEL                             vLLM offline engine (optional, GPU)
  patterns:v1                            no LLM: template phrases over the prompt's marked tokens
A spec string is parsed once into a `neuroscribe.specs.Spec` (`BACKEND_KINDS`); `load_backend` takes either.
"""

from __future__ import annotations

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
from neuroscribe.specs import BACKEND_KINDS, Spec

__all__ = [
    "limit_budget",
    "limit_options",
    "Backend",
    "BackendError",
    "Budget",
    "BudgetExceeded",
    "ChatRequest",
    "Completion",
    "PositionLogprobs",
    "RetryPolicy",
    "SamplingParams",
    "CallLimits",
    "load_backend",
    "sample_seed",
    "Spec",
]

KINDS = BACKEND_KINDS.names
_REMOTE_OPTS = {"base_urls", "max_concurrency", "retry", "budget", "allow_plain_http"}


def limit_budget(limits: CallLimits) -> Budget | None:
    """A fresh Budget of `limits` (None: unlimited); give one to several backends to share it."""
    return (
        Budget(limits.max_usd, limits.max_calls) if limits.max_usd is not None or limits.max_calls is not None else None
    )


def limit_options(limits: CallLimits, budget: Budget | None = None) -> dict:
    """Constructor options of a remote backend under `limits` (`budget`: a shared one, else a fresh one)."""
    return {
        "retry": RetryPolicy(max_attempts=limits.retries + 1, timeout=limits.timeout),
        "budget": budget or limit_budget(limits),
        "max_concurrency": limits.concurrency,
        "allow_plain_http": limits.allow_plain_http,
    }


def load_backend(
    spec: str | Spec,
    cache: Cache | None = None,
    limits: CallLimits | None = None,
    budget: Budget | None = None,
    **opts,
) -> Backend:
    """Build the backend a spec names (a string, or a Spec parsed already). `opts` go to its constructor
    (stage, prices, ...); `limits` (and a shared `budget`) apply to HTTP backends only and are ignored by
    local ones."""
    parsed = spec if isinstance(spec, Spec) else Spec.parse(spec, BACKEND_KINDS)
    if parsed.kind not in KINDS:
        raise BACKEND_KINDS.error(str(spec))
    if parsed.kind in ("openai", "anthropic"):
        if limits is not None:
            opts = {**limit_options(limits, budget), **opts}
        elif budget is not None:
            opts = {"budget": budget, **opts}
    if parsed.kind in ("hf", "vllm"):
        stray = _REMOTE_OPTS & set(opts)
        if stray:
            raise ValueError(f"backend spec {str(spec)!r}: {sorted(stray)} only apply to HTTP backends")
    if parsed.base_urls:
        if opts.get("base_urls"):
            raise ValueError(f"backend spec {str(spec)!r}: give base URLs in the spec or as base_urls=, not both")
        opts["base_urls"] = list(parsed.base_urls)
    return _backend_class(parsed.kind)(parsed.model, cache, **opts)


def _backend_class(kind: str) -> type[Backend]:
    """The class behind a kind, imported only when asked for (torch, the SDKs and vLLM load slowly)."""
    if kind == "patterns":
        from neuroscribe.backends.patterns import PatternBackend

        return PatternBackend
    if kind == "hf":
        from neuroscribe.backends.local import TransformersBackend

        return TransformersBackend
    if kind == "openai":
        from neuroscribe.backends.openai_backend import OpenAIBackend

        return OpenAIBackend
    if kind == "anthropic":
        from neuroscribe.backends.anthropic_backend import AnthropicBackend

        return AnthropicBackend
    from neuroscribe.backends.vllm_backend import VLLMBackend

    return VLLMBackend
