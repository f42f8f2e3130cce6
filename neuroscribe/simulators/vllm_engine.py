"""The prompted all-at-once simulator on a vLLM engine (`vllm:MODEL`), in large batches.

The prompt is `prompts.simulator_prompt`, as for every prompted simulator. At each `unknown` slot
the logprobs of the ten digit tokens (the same ids the hf simulator reads: `allatonce.digit_token_ids`)
are taken from the engine's top-k prompt logprobs, renormalised, and their expected value is the
prediction. Every prompt of every explanation goes to the engine in ONE call. vLLM computes every
prompt in full (prompt-logprob requests bypass its prefix cache), so on CPU this path is slower than
the hf simulator, which runs each shared prefix once (benchmarks/vllm_simulate.py: 0.23x).

Exact as long as all ten digits are in the top-k; a digit outside it counts as zero mass
(`last_stats.n_missing_digits`), a slot with none is NaN. vLLM's CPU runner cannot score chosen ids
(`prompt_logprob_token_ids` needs the V2 runner), so the top-k is large: prompted SmolLM2 ranks
digits far down ("unknown" takes the mass). Measured: on the test's sentences top-400 held all ten
at every slot (max difference from hf 1.6e-5), top-200 missed 11-18 of 380; on 32-token corpus
windows top-512 still missed 294 of 10240 (max difference 0.70). Exact read-outs need the V2 runner's
`prompt_logprob_token_ids` (GPU) or one request per slot with `logprob_token_ids`.
"""

from __future__ import annotations

from neuroscribe.prompts import simulator_prompt
from neuroscribe.records import Exemplar, SimulatedExemplar
from neuroscribe.simulators.allatonce import digit_token_ids
from neuroscribe.simulators.base import Simulator, simulated
from neuroscribe.simulators.http import NAN, SimulationStats, read_slot, simulation_stats

DEFAULT_TOP_K = 512


class VLLMSimulator(Simulator):
    """All-at-once simulator on a `VLLMBackend`; `simulate_many` sends all explanations' prompts at once."""

    def __init__(self, backend, top_k: int = DEFAULT_TOP_K):
        if top_k > backend.options.max_logprobs:
            raise ValueError(
                f"VLLMSimulator: top_k={top_k} exceeds {backend.spec}'s max_logprobs={backend.options.max_logprobs}; "
                f"build the backend with max_logprobs={top_k}"
            )
        self.backend, self.top_k = backend, top_k
        self.digit_ids = digit_token_ids(backend.tokenizer)
        self.last_stats = SimulationStats()

    @property
    def spec(self) -> str:
        return f"vllm-logprobs/top{self.top_k}:{self.backend.spec}"

    def _simulate(self, explanation: str, exemplars: list[Exemplar]) -> list[SimulatedExemplar]:
        return self._simulate_many([explanation], exemplars)[0]

    def _simulate_many(self, explanations: list[str], exemplars: list[Exemplar]) -> list[list[SimulatedExemplar]]:
        prompts = [simulator_prompt(x, e.tokens) for x in explanations for e in exemplars]
        rows = self.backend.token_logprobs_at(
            [p.text for p in prompts], [p.slot_offsets for p in prompts], self.digit_ids, self.top_k
        )
        digit_of = {t: str(d) for d, t in enumerate(self.digit_ids)}
        sims, errors, missing = [], [], 0
        for k, slots in enumerate(rows):
            exemplar, predicted = exemplars[k % len(exemplars)], []
            for j, found in enumerate(slots):
                value, n_missing = read_slot({digit_of[t]: lp for t, lp in (found or {}).items()})
                if value is None:
                    why = "no token starts there" if found is None else f"no digit among the top-{self.top_k}"
                    errors.append(f"window {exemplar.window_id}: slot {j}: {why}")
                    value = NAN
                else:
                    missing += n_missing
                predicted.append(value)
            sims.append(simulated(exemplar, predicted))
        self.last_stats = simulation_stats(sims, errors, missing)
        n = len(exemplars)
        return [sims[i * n : (i + 1) * n] for i in range(len(explanations))]
