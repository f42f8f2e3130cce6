"""Sampling protocols: which exemplars a feature's explainer sees and which a simulation is scored on.

A protocol sets, per exemplar source, how many exemplars the explain split holds and how many each
held-out split holds; which sources the explainer prompt shows; which sources a simulation score pools,
and whether the top side and the random side are mixed 1:1 (`balanced`) or every scored token is pooled.
`collect --protocol NAME` mines the totals (explain + held-out x (splits - 1)) and deals the splits in
those proportions (`distill/collect/splits.py`); a store records its protocol, every score records the one that
produced its exemplars (`ScoredExplanation.sampling`).

Presets (counts per feature; "held-out" is per held-out split, so twice that is mined with two of them):
- transluce (default): explain 10 top + 5 quantile (one per activation-quantile bin of the activating
  windows); held-out the same plus 15 random; 5 inactive and 2 hard negatives in every split for the
  judges and the contrastive prompt. Score: top side (top + quantile) vs random, 1:1. Transluce's
  explainer reads top-activating and quantile exemplars; the 1:1 top-and-random score is OpenAI's.
- openai: explain 5 top; held-out 5 top + 5 random, balanced 1:1 (Bills et al. 2023's top-and-random
  score over top-activating and random excerpts, at our counts).
- anthropic (Towards Monosemanticity): explain 10 top, 2 from each of 12 equal-width activation
  intervals of (0, max], 5 random and 10 windows holding a top-activating token in another context
  (49); held-out 6 top, 2 per interval, 10 random and 20 top-activating tokens out of context (each
  run alone through the subject, its own activation stored) (60), all pooled into one correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PROTOCOL = "transluce"


@dataclass(frozen=True)
class Protocol:
    name: str
    explain: dict[str, int]
    """Source -> exemplars in the explain split (quantile: per quantile bin; interval: per interval)."""
    held_out: dict[str, int]
    """Source -> exemplars in each held-out split (same units)."""
    shown: tuple[str, ...]
    """Sources the explainer prompt shows, in this order (hard negatives join them in the contrastive style)."""
    scored: tuple[str, ...]
    """Sources a simulation score reads."""
    balanced: bool
    """True: top side vs random side mixed 1:1 (`scoring.top_and_random_score`); False: every scored token pooled."""
    quantiles: int = 5
    intervals: int = 0
    prompt_style: str = "plain"
    """The explainer prompt style `explain` uses on this protocol's stores unless told (`--prompt`): a graded
    one (the activation as a digit), never binary marks; anthropic's 49 exemplars take `graded` (running
    text about as long as `highlighted`: `plain`'s line per token made its prompts ~4x longer)."""

    def total(self, source: str, n_splits: int) -> int:
        """Exemplars of `source` to mine per feature (per bin for quantile and interval)."""
        return self.explain.get(source, 0) + self.held_out.get(source, 0) * (n_splits - 1)

    def share(self, source: str, n_splits: int) -> list[float]:
        """The fraction of `source`'s exemplars each split should get (explain first); even when the
        protocol does not have the source (a custom count)."""
        total = self.total(source, n_splits)
        if total == 0:
            return [1.0 / n_splits] * n_splits
        return [self.explain.get(source, 0) / total] + [self.held_out.get(source, 0) / total] * (n_splits - 1)


_JUDGE_SOURCES = {"inactive": 5, "hard_negative": 2}
PROTOCOLS: dict[str, Protocol] = {
    "transluce": Protocol(
        "transluce",
        explain={"top": 10, "quantile": 1, "random": 15, **_JUDGE_SOURCES},
        held_out={"top": 10, "quantile": 1, "random": 15, **_JUDGE_SOURCES},
        shown=("top", "quantile"),
        scored=("top", "quantile", "random"),
        balanced=True,
    ),
    "openai": Protocol(
        "openai",
        explain={"top": 5},
        held_out={"top": 5, "random": 5},
        shown=("top",),
        scored=("top", "random"),
        balanced=True,
    ),
    "anthropic": Protocol(
        "anthropic",
        explain={"top": 10, "interval": 2, "random": 5, "other_context": 10},
        held_out={"top": 6, "interval": 2, "random": 10, "out_of_context": 20},
        shown=("top", "interval", "random", "other_context"),
        scored=("top", "interval", "random", "out_of_context"),
        balanced=False,
        quantiles=0,
        intervals=12,
        prompt_style="graded",
    ),
}


def protocol(name: str) -> Protocol:
    """The preset called `name`; one line naming the choices otherwise."""
    base = name.removesuffix("+custom")
    if base not in PROTOCOLS:
        raise ValueError(f"sampling protocol {name!r}: choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[base]
