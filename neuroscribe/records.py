"""The domain records every stage passes on. Each type is defined here once.

A feature is followed from `collect` to `eval` by its `FeatureId.key`.
All records are frozen dataclasses that serialise to plain JSON by field name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

FeatureKind = Literal["mlp", "sae", "transcoder", "planted"]  # planted: rule-defined test features
Split = Literal["explain", "score", "test"]
# Where an exemplar came from when it was mined.
Source = Literal["top", "quantile", "random", "hard_negative"]

SPLITS: tuple[str, ...] = ("explain", "score", "test")
SOURCES: tuple[str, ...] = ("top", "quantile", "random", "hard_negative")

_KEY = re.compile(r"^(mlp|sae|transcoder|planted)/L(\d+)/(\d+)([+-])$")


@dataclass(frozen=True, order=True)
class FeatureId:
    """One unit of a subject model: an MLP neuron or an SAE/transcoder latent, with a polarity.

    Signed units (gated MLPs) are mined as two features: polarity +1 looks at `a`, -1 at `-a`.
    """

    kind: str
    layer: int
    index: int
    polarity: int = 1

    @property
    def key(self) -> str:
        return f"{self.kind}/L{self.layer}/{self.index}{'+' if self.polarity > 0 else '-'}"

    @classmethod
    def parse(cls, key: str) -> FeatureId:
        m = _KEY.match(key.strip())
        if not m:
            raise ValueError(f"not a feature key: {key!r} (expected e.g. 'mlp/L3/127+')")
        return cls(m.group(1), int(m.group(2)), int(m.group(3)), 1 if m.group(4) == "+" else -1)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Exemplar:
    """One token window of the corpus with one feature's activation at every token.

    `activations` are raw (polarity applied, not normalised); `window_id` is the window's
    global index in the corpus stream, which is what makes splits provably disjoint.
    """

    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    window_id: int
    source: str = "top"
    split: str = "explain"
    rank: int = 0  # position within its source (0 = strongest top window)
    quantile: int = -1  # bin index for source == "quantile"
    token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise ValueError(
                f"exemplar {self.window_id}: {len(self.tokens)} tokens but {len(self.activations)} activations"
            )

    @property
    def max_activation(self) -> float:
        return max(self.activations) if self.activations else 0.0


@dataclass(frozen=True)
class FeatureStats:
    max_activation: float = 0.0
    mean: float = 0.0
    variance: float = 0.0
    skewness: float = 0.0
    kurtosis: float = 0.0
    n_tokens: int = 0
    frac_active: float = 0.0  # share of tokens with activation > 0
    quantile_boundaries: tuple[float, ...] = ()


@dataclass(frozen=True)
class FeatureExemplars:
    """A feature with its mined exemplars (all splits) and summary statistics."""

    feature: FeatureId
    exemplars: tuple[Exemplar, ...]
    stats: FeatureStats = FeatureStats()
    dead: bool = False
    top_tokens: tuple[str, ...] = ()

    def select(self, split: str | None = None, sources: Sequence[str] | None = None) -> list[Exemplar]:
        return [
            e
            for e in self.exemplars
            if (split is None or e.split == split) and (sources is None or e.source in sources)
        ]

    @property
    def max_activation(self) -> float:
        return self.stats.max_activation


@dataclass(frozen=True)
class Explanation:
    """One candidate explanation of a feature, as an explainer wrote it."""

    feature: str  # FeatureId.key
    text: str
    explainer: str  # backend spec, e.g. "hf:smollm2-135m-instruct"
    prompt_style: str = "plain"
    prompt_version: str = ""
    sample_index: int = 0
    raw: str = ""  # the reply before cleaning
    ok: bool = True  # False: the reply could not be parsed; `raw` keeps it
    error: str = ""


@dataclass(frozen=True)
class SimulatedExemplar:
    """A simulator's per-token prediction for one held-out exemplar."""

    window_id: int
    source: str
    true_activations: tuple[float, ...]
    predicted: tuple[float, ...]


@dataclass(frozen=True)
class ScoredExplanation:
    """An explanation with its scores on held-out exemplars.

    `score` is the headline number (pooled Pearson r over top-and-random exemplars); NaN is kept
    as NaN (float('nan')) and never coerced to 0.
    """

    explanation: Explanation
    score: float
    random_only_score: float = float("nan")
    detection: float = float("nan")
    fuzzing: float = float("nan")
    simulator: str = ""
    split: str = "score"
    n_exemplars: int = 0
    n_parse_failures: int = 0
    simulations: tuple[SimulatedExemplar, ...] = ()


def best_candidate(
    candidates: Sequence[ScoredExplanation], threshold: float = float("-inf")
) -> ScoredExplanation | None:
    """Best-of-k's winner: the highest finite score >= threshold among parseable candidates (ties: the
    lowest sample index); None when no candidate qualifies."""
    eligible = [
        c
        for c in candidates
        if c.explanation.ok and c.explanation.text.strip() and math.isfinite(c.score) and c.score >= threshold
    ]
    return max(eligible, key=lambda c: (c.score, -c.explanation.sample_index), default=None)


def to_json(obj: Any) -> Any:
    """Plain-JSON form of any record (tuples become lists; NaN stays NaN for json's allow_nan)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def from_json(cls: type, data: dict[str, Any]) -> Any:
    """Inverse of `to_json` for the record types above (nested records and tuples restored)."""
    nested = {
        "feature": FeatureId,
        "exemplars": Exemplar,
        "stats": FeatureStats,
        "explanation": Explanation,
        "simulations": SimulatedExemplar,
    }
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    for name, value in data.items():
        target = nested.get(name)
        if cls is Explanation and name == "feature":
            target = None  # Explanation.feature is the key string
        if target is not None and isinstance(value, dict):
            value = from_json(target, value)
        elif target is not None and isinstance(value, list):
            value = tuple(from_json(target, v) for v in value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
