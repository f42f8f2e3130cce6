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
Source = Literal[
    "top", "quantile", "interval", "random", "inactive", "hard_negative", "other_context", "out_of_context"
]

SPLITS: tuple[str, ...] = ("explain", "score", "test")


@dataclass(frozen=True)
class SplitNames:
    """What each split of a store is for, by the store's own names (`mining.splits`: the first, always
    `explain`, is shown to explainers, the second scores candidates for selection, the third reports what
    no selection saw)."""

    explain: str = SPLITS[0]
    select: str = SPLITS[1]
    report: str = SPLITS[2]

    @classmethod
    def of(cls, names: Sequence[str]) -> SplitNames:
        """First, second and third split (a two-split store selects and reports on one: not `distinct`)."""
        if len(names) < 2:
            raise ValueError(f"a store needs at least two splits (explain and a held-out one), got {list(names)}")
        return cls(names[0], names[1], names[2] if len(names) > 2 else names[1])

    @property
    def distinct(self) -> bool:
        """Selection and report on different splits: what a held-out number needs."""
        return self.select != self.report


# in the order collect deals them into splits (strongest first); which a store holds: its protocol
SOURCES: tuple[str, ...] = (
    "top",
    "quantile",
    "interval",
    "random",
    "inactive",
    "hard_negative",
    "other_context",
    "out_of_context",
)
POSITIVE_SOURCES: tuple[str, ...] = ("top", "quantile", "interval")  # activating by construction: the "top side"
OUT_OF_CONTEXT = "out_of_context"  # a top-activating token run alone: one token, window_id -1 - token id

# The one labelling rule (detection, fuzzing, inactive mining, hard negatives): a window or token is
# ACTIVATING when its activation exceeds this fraction of the feature's max activation.
ACTIVE_FRACTION = 0.1


def is_activating(value: float, feature_max: float, fraction: float = ACTIVE_FRACTION) -> bool:
    return feature_max > 0 and value > fraction * feature_max


def insufficiency(n_positive: int, n_random: int) -> str:
    """Why a held-out split cannot be scored ("" when it can): the 1:1 top-and-random score needs at
    least one top/quantile exemplar and one random exemplar; anything less is never scored."""
    if n_positive == 0:
        return "insufficient: no top/quantile exemplar in the split"
    if n_random == 0:
        return "insufficient: no random exemplar in the split"
    return ""


_KEY = re.compile(r"^(mlp|sae|transcoder|planted|random|pca|ica)/L(\d+)/(\d+)([+-])$")


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
    quantile: int = -1  # bin index for source "quantile" (activation quantile) or "interval" (equal-width)
    token_ids: tuple[int, ...] = ()
    doc_span: tuple[int, int] = (-1, -1)  # first and last corpus document the window touches (-1: unknown)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise ValueError(
                f"exemplar {self.window_id}: {len(self.tokens)} tokens but {len(self.activations)} activations"
            )

    @property
    def max_activation(self) -> float:
        return max(self.activations) if self.activations else 0.0


@dataclass(frozen=True)
class OutputSide:
    """What a feature does to the next-token prediction (`neuroscribe.output_side`): token texts it
    promotes / suppresses through the unembedding (logit lens), and that gain / lose the most probability
    when it is amplified in a forward pass (token change)."""

    promoted: tuple[str, ...] = ()
    suppressed: tuple[str, ...] = ()
    raised: tuple[str, ...] = ()
    lowered: tuple[str, ...] = ()


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
    output: OutputSide | None = None  # present when collect ran with --output-side
    protocol: str = "transluce"  # the sampling protocol its exemplars follow (`neuroscribe.protocols`)

    def select(self, split: str | None = None, sources: Sequence[str] | None = None) -> list[Exemplar]:
        return [
            e
            for e in self.exemplars
            if (split is None or e.split == split) and (sources is None or e.source in sources)
        ]

    @property
    def max_activation(self) -> float:
        return self.stats.max_activation

    @property
    def reference_max(self) -> float:
        """The max that labels and display scales are relative to: the feature's max over everything
        collect saw, else the max over its exemplars (a store without statistics)."""
        if self.stats.max_activation > 0:
            return float(self.stats.max_activation)
        return max((a for e in self.exemplars for a in e.activations), default=0.0)


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


STATUSES = ("ok", "unparsed", "undefined", "insufficient")


@dataclass(frozen=True)
class ScoredExplanation:
    """An explanation with its scores on held-out exemplars (conventions: `neuroscribe.scorers`).

    `score` is the pooled Pearson r over the split's top-and-random exemplars, 1:1; NaN is kept as NaN
    and never coerced to 0 here, and `status` says why it is NaN: "unparsed" (the explanation failed),
    "undefined" (a constant simulation or truth), "insufficient" (the split lacks a side; `reason`).
    `judges` holds detection / fuzzing balanced accuracies and AUROCs when they were computed.
    """

    explanation: Explanation
    score: float
    random_only_score: float = float("nan")
    out_of_context_score: float = float("nan")  # anthropic: r over the out-of-context tokens, scored apart
    simulator: str = ""
    split: str = "score"
    status: str = "ok"
    reason: str = ""
    target: str = "relu"  # what the truth was: relu(activation) or the raw activation
    protocol: str = ""  # scorers.SCORING_VERSION of this score (the stored name; not a sampling protocol)
    sampling: str = ""  # the sampling protocol of the scored exemplars (`neuroscribe.protocols`)
    in_sample: bool = False  # the simulator was trained on this feature's exemplars
    n_exemplars: int = 0  # exemplars simulated
    n_top: int = 0  # top-side exemplars in the score (top/quantile/interval, after 1:1)
    n_random: int = 0  # random exemplars in the score (after 1:1 balancing)
    n_out_of_context: int = 0  # out-of-context tokens in `out_of_context_score`
    n_top_held: int = 0  # top/quantile exemplars the split holds
    n_random_held: int = 0  # random exemplars the split holds
    n_parse_failures: int = 0  # tokens whose prediction could not be read (dropped, never zeroed)
    judges: dict = dataclasses.field(default_factory=dict)
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
