"""Simulators that run on any `Backend` (HTTP servers included), behind `simulators.base.Simulator`.

`simulate(explanation, exemplars) -> list[SimulatedExemplar]`, one per exemplar, `predicted` as long
as the exemplar. A token whose prediction could not be read is NaN in `predicted`: failures stay
explicit, are counted in `last_stats`, and must be dropped (not zeroed) before scoring.

- EchoLogprobSimulator: one echo-logprobs request per exemplar on `simulator_prompt(...).text`; at
  each slot, the distribution over the digits 0..9 found in the top-k is renormalised and its
  expected value is the prediction. Digits missing from the top-k count as zero mass and are
  counted (`n_missing_digits`); a slot whose top-k holds no digit is a failure.
- ParsedNumberSimulator: for backends without logprobs (Anthropic, chat-only servers). Asks in chat
  for one number per token and parses the reply; a reply that does not give exactly one number
  0..9 per token fails the whole exemplar (all NaN), since numbers could not be matched to tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from neuroscribe.backends.base import Backend, ChatRequest, PositionLogprobs, SamplingParams
from neuroscribe.prompts import MAX_DIGIT, SIMULATOR_INSTRUCTIONS, SLOT, simulator_prompt
from neuroscribe.records import Exemplar, SimulatedExemplar
from neuroscribe.scoring import expected_value
from neuroscribe.simulators.base import Simulator, simulated

DIGITS = tuple(str(d) for d in range(10))
NAN = float("nan")
_MAX_ERRORS = 20  # failure reasons kept per call (the counts are always complete)


@dataclass(frozen=True)
class SimulationStats:
    """What went wrong in one `simulate` call. Failed tokens are NaN in `predicted`."""

    n_exemplars: int = 0
    n_tokens: int = 0
    n_failed_tokens: int = 0
    n_failed_exemplars: int = 0  # exemplars with at least one failed token
    n_missing_digits: int = 0  # echo only: digits absent from a read slot's top-k (zero mass)
    errors: tuple[str, ...] = ()


def read_slot(top: Mapping[str, float] | None) -> tuple[float | None, int]:
    """(expected digit, number of digits 0..9 missing) from one slot's top-k logprobs.

    None when no digit is in the top-k: that is a failure, never a prediction of 0.
    """
    digits = {int(tok): lp for tok, lp in (top or {}).items() if tok in DIGITS and math.isfinite(lp)}
    if not digits:
        return None, len(DIGITS)
    return expected_value(digits, log=True), len(DIGITS) - len(digits)


def read_slots(
    positions: Sequence[PositionLogprobs], slot_offsets: Sequence[int]
) -> tuple[list[float], list[str], int]:
    """(one prediction per slot, NaN where unreadable; failure reasons; missing-digit count)."""
    by_offset = {p.offset: p for p in positions}
    predicted, errors, missing = [], [], 0
    for k, offset in enumerate(slot_offsets):
        position = by_offset.get(offset)
        if position is None:
            predicted.append(NAN)
            errors.append(f"slot {k}: no token starts at character {offset} (the tokenizer merged across it)")
            continue
        value, n_missing = read_slot(position.top)
        if value is None:
            predicted.append(NAN)
            errors.append(f"slot {k}: no digit among the top-{len(position.top or {})} tokens")
            continue
        predicted.append(value)
        missing += n_missing
    return predicted, errors, missing


def simulation_stats(sims: Sequence[SimulatedExemplar], errors: list[str], missing: int = 0) -> SimulationStats:
    failed = [sum(1 for v in s.predicted if math.isnan(v)) for s in sims]
    return SimulationStats(
        n_exemplars=len(sims),
        n_tokens=sum(len(s.predicted) for s in sims),
        n_failed_tokens=sum(failed),
        n_failed_exemplars=sum(1 for f in failed if f),
        n_missing_digits=missing,
        errors=tuple(errors[:_MAX_ERRORS]),
    )


class EchoLogprobSimulator(Simulator):
    """All-at-once simulator reading slot distributions from a backend's prompt logprobs."""

    def __init__(self, backend: Backend, top_k: int = 10, stage: str = "simulate"):
        if not backend.supports_logprobs:
            raise ValueError(
                f"EchoLogprobSimulator: {backend.spec} cannot return prompt logprobs; use ParsedNumberSimulator with it"
            )
        self.backend, self.top_k, self.stage = backend, top_k, stage
        self.last_stats = SimulationStats()

    @property
    def spec(self) -> str:
        return f"echo-logprobs/top{self.top_k}:{self.backend.spec}"

    def _simulate(self, explanation: str, exemplars: list[Exemplar]) -> list[SimulatedExemplar]:
        prompts = [simulator_prompt(explanation, e.tokens) for e in exemplars]
        results = self.backend.prompt_logprobs_batch([p.text for p in prompts], self.top_k, stage=self.stage)
        sims, errors, missing = [], [], 0
        for exemplar, prompt, positions in zip(exemplars, prompts, results):
            predicted, errs, n_missing = read_slots(positions, prompt.slot_offsets)
            sims.append(simulated(exemplar, predicted))
            errors += [f"window {exemplar.window_id}: {e}" for e in errs]
            missing += n_missing
        self.last_stats = simulation_stats(sims, errors, missing)
        return sims


# A reply line counts if it is a bare number, or ends in TAB + number (an echoed `token<TAB>digit` line).
_NUMBER_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*$|\t\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_numbers(reply: str, n_tokens: int) -> tuple[list[float] | None, str]:
    """One number 0..9 per token from a chat reply, or (None, reason).

    Only bare-number lines and `...<TAB>number` lines count, so prose that happens to contain a
    number cannot shift the alignment; exactly `n_tokens` such lines, all within 0..9, are required.
    """
    values = []
    for line in reply.splitlines():
        match = _NUMBER_LINE.search(line)
        if match:
            values.append(float(match.group(1) or match.group(2)))
    if len(values) != n_tokens:
        return None, f"expected {n_tokens} numbers, found {len(values)}"
    bad = [v for v in values if not 0 <= v <= MAX_DIGIT]
    if bad:
        return None, f"numbers outside 0..{MAX_DIGIT}: {bad[:3]}"
    return values, ""


class ParsedNumberSimulator(Simulator):
    """Logprob-free simulator: chat for one number per token, parse, count failures."""

    def __init__(self, backend: Backend, temperature: float = 0.0, stage: str = "simulate"):
        self.backend, self.temperature, self.stage = backend, temperature, stage
        self.last_stats = SimulationStats()

    @property
    def spec(self) -> str:
        return f"parsed-numbers:{self.backend.spec}"

    def messages(self, explanation: str, tokens: Sequence[str]) -> list[dict]:
        prompt = simulator_prompt(explanation, tokens)
        ask = (
            f'\nThe excerpt above has {len(tokens)} lines that read "{SLOT}". Reply with exactly '
            f'{len(tokens)} lines, one per "{SLOT}" line and in the same order, each holding only '
            f"your predicted activation: an integer from 0 to {MAX_DIGIT}. No other text."
        )
        return [
            {"role": "system", "content": SIMULATOR_INSTRUCTIONS.strip()},
            {"role": "user", "content": prompt.text.removeprefix(SIMULATOR_INSTRUCTIONS) + ask},
        ]

    def _simulate(self, explanation: str, exemplars: list[Exemplar]) -> list[SimulatedExemplar]:
        requests = [
            ChatRequest(
                tuple(self.messages(explanation, e.tokens)),
                SamplingParams(temperature=self.temperature, max_tokens=4 * len(e.tokens) + 16, seed=0),
            )
            for e in exemplars
        ]
        replies = self.backend.generate(requests, stage=self.stage)
        sims, errors = [], []
        for exemplar, reply in zip(exemplars, replies):
            values, reason = parse_numbers(reply.text, len(exemplar.tokens))
            if values is None:
                values = [NAN] * len(exemplar.tokens)
                errors.append(f"window {exemplar.window_id}: {reason}")
            sims.append(simulated(exemplar, values))
        self.last_stats = simulation_stats(sims, errors)
        return sims
