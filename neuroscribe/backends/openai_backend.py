"""OpenAI-compatible HTTP backend (api.openai.com, vLLM serve, llama.cpp server, ...) via AsyncOpenAI.

Prompt logprobs use the legacy completions endpoint with `echo=True, max_tokens=1, logprobs=k`.
Servers disagree on what an echoed entry describes:
- OpenAI and vLLM ("same"): entry i's `top_logprobs` is the distribution that predicted token i,
  and the one generated token comes back as an extra entry after the prompt.
- llama-cpp-python without a BOS token ("next"): entry i holds the distribution AFTER token i (it
  predicts token i+1; its `token_logprobs[i]` is token i read from that same row), and the generated
  token is not listed. We shift such entries by one so that every `PositionLogprobs` describes the
  token at its own position; the first token then has no distribution, as everywhere.
`echo_alignment="auto"` (default) tells the two apart by whether the generated token is listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from neuroscribe.backends.base import ChatRequest, Completion, PositionLogprobs, sample_seed
from neuroscribe.backends.remote import RemoteBackend, reply_text

Alignment = Literal["auto", "same", "next"]


class OpenAIBackend(RemoteBackend):
    kind = "openai"
    supports_logprobs = True
    env_key = "OPENAI_API_KEY"
    env_base_url = "OPENAI_BASE_URL"

    def configure(self, *, echo_alignment: Alignment = "auto", **remote_opts) -> None:
        super().configure(**remote_opts)
        if echo_alignment not in ("auto", "same", "next"):
            raise ValueError(f"echo_alignment must be auto, same or next, got {echo_alignment!r}")
        self.echo_alignment = echo_alignment

    def logprobs_key_extra(self) -> dict:
        return {"echo_alignment": self.echo_alignment}

    def make_client(self, base_url: str | None, api_key: str | None):
        from openai import AsyncOpenAI

        if api_key is None:
            if base_url is None:
                raise ValueError(f"{self.spec}: set OPENAI_API_KEY (or give base_urls for a local server)")
            api_key = "not-needed"  # local OpenAI-compatible servers ignore it, the SDK requires one
        return AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=self.retry.timeout)

    def is_retryable(self, exc: BaseException) -> bool:
        import openai

        return isinstance(exc, openai.APIConnectionError) or super().is_retryable(exc)

    def known_failed(self, exc: BaseException) -> bool:
        import openai

        refused = isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)
        return refused or super().known_failed(exc)

    async def send_chat(self, client: Any, request: ChatRequest) -> Completion:
        p = request.params
        extra: dict[str, Any] = {}
        seed = sample_seed(p, request.sample_index)
        if seed is not None:
            extra["seed"] = seed
        if p.stop:
            extra["stop"] = list(p.stop)
        response = await client.chat.completions.create(
            model=self.model,
            messages=list(request.messages),
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            **extra,
        )
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=reply_text(choice.message.content, f"{self.spec}: chat completion"),
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    async def send_prompt_logprobs(self, client: Any, prompt: str, top_k: int) -> tuple[list[PositionLogprobs], int]:
        # max_tokens=1: llama-cpp-python reads max_tokens<=0 as "until the context is full".
        response = await client.completions.create(
            model=self.model, prompt=prompt, echo=True, max_tokens=1, logprobs=top_k, temperature=0.0
        )
        lp = response.choices[0].logprobs
        usage = response.usage
        positions = align_echo_logprobs(
            prompt, lp.tokens, lp.text_offset, lp.token_logprobs, lp.top_logprobs, self.echo_alignment
        )
        return positions, usage.prompt_tokens if usage else len(positions)


def align_echo_logprobs(
    prompt: str,
    tokens: Sequence[str],
    offsets: Sequence[int],
    token_logprobs: Sequence[float | None],
    top_logprobs: Sequence[dict[str, float] | None],
    alignment: Alignment = "auto",
) -> list[PositionLogprobs]:
    """Echoed completion logprobs -> one PositionLogprobs per prompt token, each AT its own position."""
    n = sum(1 for off in offsets if off < len(prompt))  # entries past the prompt are generated tokens
    if alignment == "auto":
        alignment = "same" if n < len(offsets) else "next"
    positions = []
    for i in range(n):
        if alignment == "same":
            top, logprob = top_logprobs[i], token_logprobs[i]
        else:  # entry i-1 holds the distribution that predicts token i
            top = top_logprobs[i - 1] if i > 0 else None
            logprob = top.get(tokens[i]) if top else None
        positions.append(PositionLogprobs(int(offsets[i]), tokens[i], logprob, dict(top) if top else None))
    if positions:  # nothing predicts the first token, whatever the server put there
        positions[0] = PositionLogprobs(positions[0].offset, positions[0].token)
    return positions
