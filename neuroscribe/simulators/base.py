"""The one simulator interface, and the two rules every simulator shares.

A simulator reads an explanation and predicts a feature's activation at every token of held-out
exemplars: `simulate(explanation, exemplars) -> list[SimulatedExemplar]`, one per exemplar, in input
order, `predicted` as long as the exemplar (`simulate_many` does several explanations at once). A token
whose prediction could not be read is NaN: failures stay explicit and are dropped (never zeroed) by
the scorers.

Rules enforced here, once, for every implementation:
- a simulator never sees the explain split (`refuse_explain_split`);
- results are built by `simulated`, so every simulator reports the exemplar's own window id,
  source and raw activations.

Yes/No judges (detection, fuzzing) are a second, smaller interface, `YesNoJudge`: any object with
`spec` and `yes_probabilities(conversations)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from neuroscribe.records import Exemplar, SimulatedExemplar


def refuse_explain_split(exemplars: Sequence[Exemplar]) -> None:
    leaked = [e.window_id for e in exemplars if e.split == "explain"]
    if leaked:
        raise ValueError(
            f"simulator given explain-split exemplars (window ids {leaked[:5]}); "
            "a simulator only ever sees held-out exemplars"
        )


def simulated(exemplar: Exemplar, predicted: Sequence[float]) -> SimulatedExemplar:
    if len(predicted) != len(exemplar.tokens):
        raise ValueError(f"window {exemplar.window_id}: {len(predicted)} predictions for {len(exemplar.tokens)} tokens")
    return SimulatedExemplar(exemplar.window_id, exemplar.source, tuple(exemplar.activations), tuple(predicted))


class Simulator(ABC):
    """Predicts per-token activations from an explanation. `spec` names it in caches and reports."""

    spec: str = ""
    trained_features: tuple[str, ...] = ()  # a fine-tuned simulator names the features it was trained on

    def simulate(self, explanation: str, exemplars: Sequence[Exemplar]) -> list[SimulatedExemplar]:
        refuse_explain_split(exemplars)
        if not exemplars:
            return []
        return self._simulate(explanation, list(exemplars))

    def simulate_many(
        self, explanations: Sequence[str], exemplars: Sequence[Exemplar]
    ) -> list[list[SimulatedExemplar]]:
        """`simulate` for each explanation over the same exemplars (best-of-k's k candidates of one
        feature); a local simulator overrides `_simulate_many` to batch them."""
        refuse_explain_split(exemplars)
        if not exemplars or not explanations:
            return [[] for _ in explanations]
        return self._simulate_many(list(explanations), list(exemplars))

    @abstractmethod
    def _simulate(self, explanation: str, exemplars: list[Exemplar]) -> list[SimulatedExemplar]:
        """Predictions for held-out exemplars (already checked, never empty)."""

    def _simulate_many(self, explanations: list[str], exemplars: list[Exemplar]) -> list[list[SimulatedExemplar]]:
        return [self.simulate(e, exemplars) for e in explanations]  # a subclass's own `simulate` counts


class YesNoJudge(Protocol):
    """Answers Yes/No questions with a probability (detection and fuzzing judges)."""

    spec: str

    def yes_probabilities(self, conversations: Sequence[list[dict]]) -> list[float]: ...
