"""Anthropic Messages API backend via AsyncAnthropic, on the shared retry/budget/concurrency machinery.

The API has no seed: `sample_index` only tells samples apart in the cache. The installed SDK no
longer declares `temperature`/`top_p`, so they travel in `extra_body` (set `send_sampling=False`
for models that refuse them). No prompt logprobs: use ParsedNumberSimulator with this backend.
"""

from __future__ import annotations

from typing import Any

from neuroscribe.backends.base import ChatRequest, Completion
from neuroscribe.backends.remote import RemoteBackend, reply_text


class AnthropicBackend(RemoteBackend):
    kind = "anthropic"
    supports_logprobs = False
    env_key = "ANTHROPIC_API_KEY"
    env_base_url = "ANTHROPIC_BASE_URL"
    default_concurrency = 4

    def configure(self, *, send_sampling: bool = True, http_client: Any = None, **remote_opts) -> None:
        super().configure(**remote_opts)
        self.send_sampling = send_sampling
        self._http_client = http_client  # an httpx2.AsyncClient (proxies, or a recorded-response transport)

    def make_client(self, base_url: str | None, api_key: str | None):
        from anthropic import AsyncAnthropic

        if api_key is None:
            raise ValueError(f"{self.spec}: set ANTHROPIC_API_KEY")
        kwargs: dict[str, Any] = {"api_key": api_key, "max_retries": 0, "timeout": self.retry.timeout}
        if base_url is not None:
            kwargs["base_url"] = base_url
        if self._http_client is not None:
            kwargs["http_client"] = self._http_client
        return AsyncAnthropic(**kwargs)

    def is_retryable(self, exc: BaseException) -> bool:
        import anthropic

        return isinstance(exc, anthropic.APIConnectionError) or super().is_retryable(exc)

    async def send_chat(self, client: Any, request: ChatRequest) -> Completion:
        p = request.params
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        turns = [{"role": m["role"], "content": m["content"]} for m in request.messages if m["role"] != "system"]
        kwargs: dict[str, Any] = {}
        if system:
            kwargs["system"] = system
        if p.stop:
            kwargs["stop_sequences"] = list(p.stop)
        if self.send_sampling:
            body: dict[str, Any] = {"temperature": min(p.temperature, 1.0)}  # the API caps it at 1
            if p.top_p < 1.0:
                body["top_p"] = p.top_p
            kwargs["extra_body"] = body
        response = await client.messages.create(model=self.model, max_tokens=p.max_tokens, messages=turns, **kwargs)
        texts = [getattr(block, "text", "") for block in response.content or ()]
        text = "".join(texts) if all(isinstance(t, str) for t in texts) else texts  # a non-text block: BadReply
        return Completion(
            text=reply_text(text, f"{self.spec}: message"),
            tokens_in=response.usage.input_tokens,
            tokens_out=response.usage.output_tokens,
            finish_reason="length" if response.stop_reason == "max_tokens" else "stop",
        )

    def _clients(self) -> dict[str, Any]:
        # A caller-supplied http client is shared; closing the SDK client would close it too.
        clients = super()._clients()
        return clients if self._http_client is None else {k: _NoClose(c) for k, c in clients.items()}


class _NoClose:
    def __init__(self, client: Any):
        self.messages = client.messages
