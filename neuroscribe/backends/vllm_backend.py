"""vLLM offline engine backend (GPU). vllm is optional: importing this module never needs it.

Per-request seeds (`seed + sample_index`) go into each request's SamplingParams, so a sample does not
depend on its batch. vLLM's `prompt_logprobs` already describe each token at its own position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from neuroscribe.backends.base import Backend, ChatRequest, Completion, PositionLogprobs, sample_seed


def _require_vllm():
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "backend 'vllm:' needs the vllm package (CUDA only): pip install 'neuroscribe[vllm]'; "
            "on CPU use 'hf:' or serve the model and use 'openai:MODEL@URL'"
        ) from None
    return vllm


class VLLMBackend(Backend):
    kind = "vllm"
    supports_logprobs = True

    def __init__(self, model: str, cache=None, stage: str = "default", prices=None, *, engine=None, **engine_opts):
        super().__init__(model, cache, stage, prices)
        vllm = _require_vllm()
        if engine is None:
            from neuroscribe.models import resolve

            src = resolve(model)  # a bundled name maps to its converted copy (or GGUF) on disk
            path = src.path if src.gguf_file is None else f"{src.path}/{src.gguf_file}"
            engine = vllm.LLM(model=path, seed=0, **engine_opts)
        self.engine = engine

    def _params(self, request: ChatRequest):
        from vllm import SamplingParams as VllmParams

        p = request.params
        seed = sample_seed(p, request.sample_index)
        return VllmParams(
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            seed=request.sample_index if seed is None else seed,
            stop=list(p.stop) or None,
        )

    def _generate(self, requests: Sequence[ChatRequest], on_done: Callable[[int, Completion], None]) -> None:
        outputs = self.engine.chat(
            [list(r.messages) for r in requests], [self._params(r) for r in requests], use_tqdm=False
        )
        for i, out in enumerate(outputs):
            best = out.outputs[0]
            finish = "length" if best.finish_reason == "length" else "stop"
            on_done(i, Completion(best.text, len(out.prompt_token_ids), len(best.token_ids), False, finish))

    def _prompt_logprobs(self, prompt: str, top_k: int) -> tuple[list[PositionLogprobs], int]:
        from vllm import SamplingParams as VllmParams

        out = self.engine.generate(
            [prompt], VllmParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k), use_tqdm=False
        )[0]
        tokenizer = self.engine.get_tokenizer()
        ids = list(out.prompt_token_ids)
        enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
        if list(enc["input_ids"]) != ids:
            raise RuntimeError(f"{self.spec}: engine and tokenizer disagree on the prompt's tokens")
        special = set(tokenizer.all_special_ids)
        positions = []
        for i, (token_id, (start, end)) in enumerate(zip(ids, enc["offset_mapping"])):
            if token_id in special and start == end:
                continue
            entry = out.prompt_logprobs[i] if out.prompt_logprobs else None
            if not entry:
                positions.append(PositionLogprobs(start, prompt[start:end]))
                continue
            ranked = sorted(entry.items(), key=lambda kv: -kv[1].logprob)
            top = {(lp.decoded_token or tokenizer.decode([t])): lp.logprob for t, lp in ranked[: top_k + 1]}
            own = entry.get(token_id)
            positions.append(PositionLogprobs(start, prompt[start:end], own.logprob if own else None, top))
        return positions, len(ids)

    def close(self) -> None:
        self.engine = None
