"""Local transformers backend: batched chat generation and prompt logprobs from one forward pass.

Prefix sharing: requests with the same prompt (best-of-k's k samples) share one prefill. A batch's
distinct prompts are left-padded and run once up to their last token; that cache is gathered to one
row per request and `generate` continues from it, so a prompt's tokens are computed once however
many samples are drawn from it (`benchmarks/explain.py` measures the gain).

Reproducibility guarantee: every request samples from its own torch.Generator seeded with
`seed + sample_index` (seed 0 when the params give none), inside a logits processor that picks each
row's token with that row's generator. So the random stream of sample i never depends on which other
requests share its batch. The logits themselves come from a left-padded batch and may differ from an
unpadded run in the last float bits, so identical text across batch compositions is what happens in
practice (the tests check it), not a bitwise promise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from neuroscribe.backends.base import Backend, ChatRequest, Completion, PositionLogprobs, sample_seed
from neuroscribe.models import cache_kwarg, load_model


class _PerRowSampler:
    """LogitsProcessor that samples each row with its own generator and leaves greedy to pick it."""

    def __init__(self, temperatures: list[float], top_ps: list[float], generators: list[torch.Generator]):
        self.temperatures, self.top_ps, self.generators = temperatures, top_ps, generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        for row in range(scores.shape[0]):
            logits = scores[row].float().cpu()  # CPU generators: the same stream on any device
            temperature = self.temperatures[row]
            if temperature == 0:
                chosen[row] = int(torch.argmax(logits))
                continue
            probs = torch.softmax(logits / temperature, dim=-1)
            if self.top_ps[row] < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                outside = torch.cumsum(sorted_p, 0) - sorted_p > self.top_ps[row]  # keep the first token always
                sorted_p[outside] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            chosen[row] = int(torch.multinomial(probs, 1, generator=self.generators[row]))
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), chosen.to(scores.device)] = 0.0
        return out


class TransformersBackend(Backend):
    kind = "hf"
    supports_logprobs = True

    def configure(self, *, dtype: str = "float32", device: str = "cpu", batch_size: int = 8, loaded=None) -> None:
        """`loaded=(model, tokenizer)` reuses an already loaded pair instead of loading `model`."""
        if loaded is None:
            loaded = load_model(self.model, dtype=dtype, device=device)
        self.lm, self.tokenizer = loaded
        weights = next(self.lm.parameters()).dtype
        if weights != torch.float32:  # results depend on precision: keep dtypes apart in the cache
            self.model = f"{self.model}@{str(weights).removeprefix('torch.')}"
        self.batch_size = batch_size
        self.device = next(self.lm.parameters()).device
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = {self.tokenizer.eos_token_id}
        config_eos = getattr(getattr(self.lm, "generation_config", None), "eos_token_id", None)
        eos |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
        self.eos_ids = sorted(e for e in eos if e is not None)
        self._texts: dict[int, str] = {}

    def _token_text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:  # decoding is slow; a large top-k revisits the same ids at every position
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def _chat_ids(self, request: ChatRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate(self, requests: Sequence[ChatRequest], on_done: Callable[[int, Completion], None]) -> None:
        prompts = [self._chat_ids(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))  # similar lengths pad less
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, completion in zip(
                chunk, self._generate_batch([requests[i] for i in chunk], [prompts[i] for i in chunk])
            ):
                on_done(i, completion)

    @torch.no_grad()
    def _generate_batch(self, requests: list[ChatRequest], prompts: list[list[int]]) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList

        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        cache = self._shared_prefill(prompts, input_ids, attention)
        seeds = [sample_seed(r.params, r.sample_index) for r in requests]
        generators = [
            torch.Generator().manual_seed(r.sample_index if s is None else s) for r, s in zip(requests, seeds)
        ]
        sampler = _PerRowSampler(
            [r.params.temperature for r in requests], [r.params.top_p for r in requests], generators
        )
        config = GenerationConfig(  # a fresh config: no model-default penalties or warpers sneak in
            max_new_tokens=max(r.params.max_tokens for r in requests),
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
        )
        output = self.lm.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            **({} if cache is None else {cache_kwarg(self.lm): cache}),
        )
        completions = []
        for row, request in enumerate(requests):
            new = output[row, width:].tolist()[: request.params.max_tokens]
            ended = next((k for k, t in enumerate(new) if t in self.eos_ids), None)
            kept = new if ended is None else new[:ended]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            finish = "length" if ended is None else "stop"
            cut = min((text.find(s) for s in request.params.stop if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            completions.append(Completion(text, len(prompts[row]), len(kept) + (ended is not None), False, finish))
        return completions

    def _shared_prefill(self, prompts: list[list[int]], input_ids: torch.Tensor, attention: torch.Tensor):
        """The KV cache of every row's prompt but its last token, each distinct prompt computed once
        (module doc); None when no prompt repeats (then `generate`'s own prefill is as cheap)."""
        first: dict[tuple[int, ...], int] = {}
        rows = [first.setdefault(tuple(p), i) for i, p in enumerate(prompts)]
        if len(first) == len(prompts) or input_ids.shape[1] < 2:
            return None
        unique = sorted(first.values())
        out = self.lm(input_ids=input_ids[unique, :-1], attention_mask=attention[unique, :-1], use_cache=True)
        cache = out.past_key_values
        cache.batch_select_indices(torch.tensor([unique.index(r) for r in rows], device=self.device))
        return cache

    @torch.no_grad()
    def _prompt_logprobs(self, prompt: str, top_k: int) -> tuple[list[PositionLogprobs], int]:
        enc = self.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        special = set(self.tokenizer.all_special_ids)
        logits = self.lm(input_ids=torch.tensor([ids], device=self.device)).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top_values, top_ids = torch.topk(logprobs, top_k, dim=-1)
        positions = []
        for i, (token_id, (start, end)) in enumerate(zip(ids, offsets)):
            if token_id in special and start == end:  # BOS and friends: context, not prompt text
                continue
            if i == 0:
                positions.append(PositionLogprobs(start, prompt[start:end]))
                continue
            top: dict[str, float] = {}
            for t, v in zip(top_ids[i - 1].tolist(), top_values[i - 1].tolist()):
                top.setdefault(self._token_text(t), float(v))  # ids that decode alike keep the best
            positions.append(PositionLogprobs(start, prompt[start:end], float(logprobs[i - 1, token_id]), top))
        return positions, len(ids)
