"""The prompted all-at-once expected-value simulator on a local transformers model.

One prompt per exemplar (`prompts.simulator_prompt`): at every `unknown` slot the next-token
distribution restricted to the ten digit tokens is renormalised and its expected value is the
prediction for that token. Only the ten digit logits are ever needed (softmax over a subset is
the renormalised restriction), so the fast path multiplies the last hidden state by those ten
rows of the output embedding instead of computing the full-vocabulary head.

Fast path ("shared_prefix"): the prefix (instructions + few-shot + explanation) is run ONCE and
its KV cache reused for every exemplar of that explanation; the bodies run in right-padded
batches on top of a copy of that cache (positions continue after the prefix; with right padding
and causal attention no real token ever attends to a pad). Slow path ("full"): every exemplar is
its own forward over the whole prompt with the model's full logits; the tests prove both agree.

The same model also answers Yes/No questions (`yes_probabilities`), the judges of detection and
fuzzing (`neuroscribe.scorers`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from neuroscribe import scoring
from neuroscribe.corpus import context_prefix
from neuroscribe.models import cache_kwarg
from neuroscribe.prompts import SimulatorPrompt, simulator_prompt
from neuroscribe.records import Exemplar, SimulatedExemplar
from neuroscribe.simulators.base import Simulator, simulated

MODES = ("shared_prefix", "full")
MIN_SHARED_PREFIX = 32  # tokens: below this a copied cache saves less than it costs


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def single_token_ids(tokenizer, texts: Sequence[str], after: str = "\t") -> list[int]:
    """Id of each text as the one token it becomes right after `after`; fails loudly otherwise.

    Encoding in context matters: SentencePiece tokenizers give a bare "3" a space-prefixed piece.
    """
    base = tokenizer(after, add_special_tokens=False)["input_ids"]
    ids = []
    for text in texts:
        full = tokenizer(after + text, add_special_tokens=False)["input_ids"]
        tail = full[len(base) :]
        if full[: len(base)] != base or len(tail) != 1:
            raise ValueError(
                f"simulator: {text!r} is not a single token after {after!r} in tokenizer "
                f"{_tokenizer_name(tokenizer)} (got {tokenizer.convert_ids_to_tokens(tail)}); each answer "
                "must be readable from one next-token distribution"
            )
        ids.append(tail[0])
    return ids


def digit_token_ids(tokenizer) -> list[int]:
    return single_token_ids(tokenizer, [str(d) for d in range(10)])


class LocalSimulator(Simulator):
    """All-at-once simulator on a local transformers model (any causal LM, PEFT-wrapped included).

    `simulate` gives expected values on the 0..9 display scale; `yes_probabilities` serves the
    detection and fuzzing judges. mode="full" is the slow reference path (see the module doc).
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, spec: str = "", mode: str = "shared_prefix"):
        if mode not in MODES:
            raise ValueError(f"simulator mode {mode!r}: choose one of {list(MODES)}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.mode = max(1, batch_size), mode
        self.spec = spec or f"local:{_tokenizer_name(tokenizer)}"
        self.digit_ids = digit_token_ids(tokenizer)
        self.context_ids = context_prefix(tokenizer)
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        self._yes_no: tuple[list[int], list[int]] | None = None
        self._seen_prefix: tuple[list[int], object] | None = None  # (ids, KV cache) of the first prefix

    # ------------------------------------------------------------------ all-at-once simulation

    def _simulate(self, explanation: str, exemplars: list[Exemplar]) -> list[SimulatedExemplar]:
        """Expected activation (0..9 scale) at every token of every exemplar, in input order."""
        prompts = [simulator_prompt(explanation, e.tokens) for e in exemplars]
        prefix_ids = self.context_ids + self._encode(prompts[0].prefix)
        bodies = [self._encode_body(p) for p in prompts]
        logits = self.digit_logits(prefix_ids, bodies)
        return [
            simulated(e, [scoring.expected_value(row, log=True) for row in lg.float().tolist()])
            for e, lg in zip(exemplars, logits)
        ]

    def digit_logits(self, prefix_ids: list[int], bodies: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """Per body, the read-out ids' logits at its reader positions, after one shared prefix."""
        self._check_length(len(prefix_ids) + max(len(ids) for ids, _ in bodies))
        if self.mode == "full":
            return [self._full_digit_logits(prefix_ids, ids, readers) for ids, readers in bodies]
        return self._shared_prefix_digit_logits(prefix_ids, bodies)

    def digit_logits_many(
        self, prefixes: list[list[int]], bodies: list[tuple[list[int], list[int]]]
    ) -> list[list[torch.Tensor]]:
        """`digit_logits` for several prefixes over the same bodies ([prefix][body]): every prefix in one
        left-padded forward, then all (prefix, body) rows in large batches, each reading its prefix's KV."""
        self._check_length(max(map(len, prefixes)) + max(len(ids) for ids, _ in bodies))
        if self.mode == "full" or len(prefixes) == 1:
            return [self.digit_logits(p, bodies) for p in prefixes]
        return self._batched_prefix_digit_logits(prefixes, bodies)

    def _check_length(self, n_tokens: int) -> None:
        """Learned absolute positions (GPT-2's n_positions) cannot extrapolate: fail with the numbers."""
        limit = getattr(self.model.config.get_text_config(), "n_positions", None)
        if limit and n_tokens > limit:
            raise ValueError(
                f"simulator prompt of {n_tokens} tokens exceeds the model's {limit} positions "
                f"({self.spec}); use shorter exemplars or a model with a longer context"
            )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_body(self, prompt: SimulatorPrompt) -> tuple[list[int], list[int]]:
        """Body ids and, per slot, the body position whose next-token distribution predicts it."""
        enc = self.tokenizer(prompt.body, add_special_tokens=False, return_offsets_mapping=True)
        first_token_at: dict[int, int] = {}
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if end > start:
                first_token_at.setdefault(start, i)
        readers = []
        for offset in prompt.slot_offsets:
            j = first_token_at.get(offset - len(prompt.prefix))
            if not j:  # None, or 0: nothing before the slot to read from
                raise ValueError(
                    f"simulator: tokenizer {_tokenizer_name(self.tokenizer)} merges an 'unknown' slot with the "
                    f"text before it (slot at character {offset}); the slot must start a token"
                )
            readers.append(j - 1)
        return list(enc["input_ids"]), readers

    def _digit_head(self, hidden: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits of `token_ids` only, from final hidden states (incl. the model's logit transforms)."""
        head = self.model.get_output_embeddings()
        logits = hidden.float() @ head.weight[list(token_ids)].float().T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[list(token_ids)].float()
        config = self.model.config.get_text_config()
        if getattr(config, "logit_scale", None):  # Cohere
            logits = logits * config.logit_scale
        if getattr(config, "logits_scaling", None):  # Granite
            logits = logits / config.logits_scaling
        cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.inference_mode()
    def _full_digit_logits(self, prefix_ids: list[int], body_ids: list[int], readers: list[int]) -> torch.Tensor:
        ids = torch.tensor([prefix_ids + body_ids], device=self.model.device)
        logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
        rows = torch.tensor(readers, device=ids.device) + len(prefix_ids)
        return logprobs[rows][:, self.digit_ids]

    @torch.inference_mode()
    def _shared_prefix_digit_logits(self, prefix_ids: list[int], bodies) -> list[torch.Tensor]:
        decoder, device = self.model.get_decoder(), self.model.device
        n_prefix = len(prefix_ids)
        cache_name = cache_kwarg(decoder)
        prefix_cache = self._prefix_cache(decoder, prefix_ids, cache_name)
        out: list[torch.Tensor | None] = [None] * len(bodies)
        order = sorted(range(len(bodies)), key=lambda i: len(bodies[i][0]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(bodies[i][0]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(batch), n_prefix + width), dtype=torch.long, device=device)
            mask[:, :n_prefix] = 1
            for row, i in enumerate(batch):
                ids[row, : len(bodies[i][0])] = torch.tensor(bodies[i][0], device=device)
                mask[row, n_prefix : n_prefix + len(bodies[i][0])] = 1
            cache = copy.deepcopy(prefix_cache)  # the forward appends to it in place
            cache.batch_repeat_interleave(len(batch))
            positions = torch.arange(n_prefix, n_prefix + width, device=device).expand(len(batch), width)
            hidden = decoder(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_name: cache}
            ).last_hidden_state
            for row, i in enumerate(batch):
                out[i] = self._digit_head(hidden[row, bodies[i][1]], self.digit_ids)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _batched_prefix_digit_logits(self, prefixes: list[list[int]], bodies) -> list[list[torch.Tensor]]:
        decoder, device = self.model.get_decoder(), self.model.device
        cache_name = cache_kwarg(decoder)
        width_p = max(len(p) for p in prefixes)
        prefix_ids = torch.full((len(prefixes), width_p), self.pad_id, dtype=torch.long, device=device)
        prefix_mask = torch.zeros_like(prefix_ids)
        for j, p in enumerate(prefixes):
            prefix_ids[j, width_p - len(p) :] = torch.tensor(p, device=device)
            prefix_mask[j, width_p - len(p) :] = 1
        out = decoder(
            input_ids=prefix_ids,
            attention_mask=prefix_mask,
            position_ids=(prefix_mask.cumsum(1) - 1).clamp(min=0),
            use_cache=True,
        )
        prefix_cache = out.get("cache", None) or out.get("past_key_values")
        pairs = [
            (j, i) for i in sorted(range(len(bodies)), key=lambda i: len(bodies[i][0])) for j in range(len(prefixes))
        ]
        result: list[list[torch.Tensor | None]] = [[None] * len(bodies) for _ in prefixes]
        rows_per_batch = self.batch_size * len(prefixes)
        for start in range(0, len(pairs), rows_per_batch):
            batch = pairs[start : start + rows_per_batch]
            width = max(len(bodies[i][0]) for _, i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(batch), width_p + width), dtype=torch.long, device=device)
            positions = torch.zeros((len(batch), width), dtype=torch.long, device=device)
            for row, (j, i) in enumerate(batch):
                n = len(bodies[i][0])
                ids[row, :n] = torch.tensor(bodies[i][0], device=device)
                mask[row, :width_p] = prefix_mask[j]
                mask[row, width_p : width_p + n] = 1
                positions[row] = torch.arange(len(prefixes[j]), len(prefixes[j]) + width, device=device)
            cache = copy.deepcopy(prefix_cache)  # the forward appends to it in place
            cache.batch_select_indices(torch.tensor([j for j, _ in batch], device=device))
            hidden = decoder(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_name: cache}
            ).last_hidden_state
            for row, (j, i) in enumerate(batch):
                result[j][i] = self._digit_head(hidden[row, bodies[i][1]], self.digit_ids)
        return result  # type: ignore[return-value]

    def _prefix_cache(self, decoder, prefix_ids: list[int], cache_name: str):
        """The KV cache of `prefix_ids`. The longest start it shares with the first prefix this simulator
        saw (the instructions and few-shot examples, for the prompted format) is computed once and copied,
        so each new explanation only runs its own header."""
        device = self.model.device
        seen = self._seen_prefix
        common = 0
        if seen is not None:
            limit = min(len(seen[0]), len(prefix_ids) - 1)
            while common < limit and seen[0][common] == prefix_ids[common]:
                common += 1
        if common < MIN_SHARED_PREFIX:
            out = decoder(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
            cache = out.get("cache", None) or out.get("past_key_values")
            if seen is None:
                self._seen_prefix = (list(prefix_ids), copy.deepcopy(cache))
            return cache
        cache = copy.deepcopy(seen[1])
        cache.crop(common - len(seen[0]))
        rest = torch.tensor([prefix_ids[common:]], device=device)
        positions = torch.arange(common, len(prefix_ids), device=device)[None]
        decoder(input_ids=rest, position_ids=positions, use_cache=True, **{cache_name: cache})
        return cache

    # ------------------------------------------------------------------ yes/no judgements

    def _yes_no_ids(self) -> tuple[list[int], list[int]]:
        """First tokens of Yes/yes/ Yes/ yes and of the No forms; a first token both share (a bare
        space, say) says nothing and is dropped."""
        if self._yes_no is None:
            yes = {self._encode(w)[0] for w in ("Yes", "yes", " Yes", " yes")}
            no = {self._encode(w)[0] for w in ("No", "no", " No", " no")}
            yes, no = sorted(yes - no), sorted(no - yes)
            if not yes or not no:
                raise ValueError(f"tokenizer {_tokenizer_name(self.tokenizer)}: Yes and No share every first token")
            self._yes_no = (yes, no)
        return self._yes_no

    def _chat_ids(self, messages: list[dict]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self._encode(text)
        text = "\n\n".join(m["content"] for m in messages) + "\nAnswer:"
        return self.context_ids + self._encode(text)

    @torch.inference_mode()
    def yes_probabilities(self, conversations: Sequence[list[dict]]) -> list[float]:
        """P(Yes) / (P(Yes) + P(No)) for the first answer token of each conversation."""
        yes, no = self._yes_no_ids()
        decoder, device = self.model.get_decoder(), self.model.device
        encoded = [self._chat_ids(m) for m in conversations]
        probs: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(x) for x in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for row, x in enumerate(batch):
                ids[row, : len(x)] = torch.tensor(x, device=device)
                mask[row, : len(x)] = 1
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            ends = torch.tensor([len(x) - 1 for x in batch], device=device)
            last = hidden[torch.arange(len(batch), device=device), ends]
            logp = torch.log_softmax(self._digit_head(last, yes + no), dim=-1)
            probs.extend(logp[:, : len(yes)].exp().sum(-1).tolist())
        return probs
