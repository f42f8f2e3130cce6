"""Planted features: units whose truth is known, for measuring simulators and explainers.

A planted rule marks character spans of a document with an activation (a regex match, or one of
its groups). Rules are defined on characters, so they hold for any tokenizer: a token's
activation is the max over the characters of its span (0 when no marked character falls inside).
Each rule carries its TRUE explanation (and other true phrasings), the text a perfect explainer writes.

`planted_features(tokenizer, rules)` turns rules into `FeatureExemplars` as `collect` would for a real
unit: documents cut into windows of `window` tokens (a window never crosses a document), per rule the
top windows (most activation, then window id) and random windows (seeded), dealt to the splits as
collect deals them (windows of one document share a split). Exemplar tokens are slices of the
document text, so they join back to it exactly. A rule's feature id is stable: its family's layer and
a hash of its name (`PlantedRule.feature`), so rules keep their keys whichever suite they sit in.

`simulator_rows` labels windows under their own rule AND under other rules (mostly all-zero labels):
training rows that teach a simulator to read the explanation rather than to guess from the text.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from neuroscribe.corpus import BUILTIN, iter_documents
from neuroscribe.distill.collect.splits import assign_splits
from neuroscribe.records import SPLITS, Exemplar, FeatureExemplars, FeatureId, FeatureStats
from neuroscribe.simulators.finetuned_format import activation_classes, contiguous_spans

KIND = "planted"
FAMILIES = ("", "word", "class", "punctuation", "span", "position", "morphology", "shape")  # index = layer


@dataclass(frozen=True)
class PlantedRule:
    """Characters matched by `pattern` (its `group`, 0 = the whole match) get `activation`."""

    name: str
    explanation: str
    pattern: str
    group: int = 0
    flags: int = 0
    activation: float = 1.0
    family: str = ""
    phrasings: tuple[str, ...] = ()  # other true explanations (training variety)
    graded: bool = False  # strength varies by matched text: labels span the classes, not only 0 and 10

    def char_activations(self, text: str) -> np.ndarray:
        acts = np.zeros(len(text), dtype=np.float32)
        for m in re.finditer(self.pattern, text, self.flags):
            start, end = m.span(self.group)
            value = self.activation * (match_strength(text[start:end]) if self.graded else 1.0)
            acts[start:end] = np.maximum(acts[start:end], value)
        return acts

    @property
    def feature(self) -> FeatureId:
        layer = FAMILIES.index(self.family) if self.family in FAMILIES else 0
        return FeatureId(KIND, layer, zlib.crc32(self.name.encode()) % 10_000_000)

    @property
    def all_phrasings(self) -> tuple[str, ...]:
        return (self.explanation, *self.phrasings)


def match_strength(matched: str) -> float:
    """A graded rule's strength on one match, in [0.2, 1]: fixed per matched text (case-folded), as a
    real unit fires harder on some of its tokens than on others; the explanation cannot predict it, so
    even the true rule's score stays below 1."""
    return 0.2 + 0.8 * (zlib.crc32(matched.strip().lower().encode()) % 1000) / 999


def word_rule(word: str) -> PlantedRule:
    """The whole word `word`, any case."""
    return PlantedRule(
        f"word:{word}", f'the word "{word}"', rf"\b{re.escape(word)}\b", flags=re.IGNORECASE, family="word"
    )


RULES: dict[str, PlantedRule] = {  # a small classic set, used by tests and the simulator benchmark
    r.name: r
    for r in (
        PlantedRule("digits", "digits and numbers", r"\d+", family="shape"),
        PlantedRule("parentheses", "the text inside parentheses", r"\(([^()]+)\)", group=1, family="span"),
        PlantedRule("double_quotes", "text inside double quotation marks", r'"([^"\n]+)"', group=1, family="span"),
        PlantedRule(
            "sentence_end",
            "the full stop or question mark that ends a sentence",
            r"(?<=[a-z)\]*])[.?!](?=\s|$)",
            family="punctuation",
        ),
        PlantedRule(
            "capitalised",
            "capitalised words (starting with an upper-case letter)",
            r"\b[A-Z][a-z]+\b",
            family="morphology",
        ),
        PlantedRule("after_the", 'the word right after "the"', r"\b[Tt]he\s+([A-Za-z]+)", group=1, family="position"),
        PlantedRule("comma", "commas", r",", family="punctuation"),
        PlantedRule("ing_words", 'words ending in "-ing"', r"\b[A-Za-z]+ing\b", family="morphology"),
        PlantedRule(
            "snake_case", "identifiers with underscores, like snake_case names", r"\b\w+_\w+\b", family="shape"
        ),
        PlantedRule("colon", "colons", r":", family="punctuation"),
        PlantedRule("long_words", "long words of ten or more letters", r"\b[a-zA-Z]{10,}\b", family="morphology"),
        PlantedRule(
            "acronyms", "words written in all capital letters, such as acronyms", r"\b[A-Z]{2,}\b", family="morphology"
        ),
        PlantedRule("asterisks", "words emphasised between asterisks", r"\*([^*\s][^*]*)\*", group=1, family="span"),
        PlantedRule(
            "after_a", 'the word right after "a" or "an"', r"\b[Aa]n?\s+([A-Za-z]+)", group=1, family="position"
        ),
    )
}


@dataclass(frozen=True)
class PlantedWindow:
    window_id: int
    doc: int  # document index in the stream
    text: str  # the document
    spans: tuple[tuple[int, int], ...]  # token character spans in `text`, contiguous
    token_ids: tuple[int, ...]

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.text[s:e] for s, e in self.spans)


def corpus_windows(
    tokenizer, window: int = 32, max_windows: int | None = None, dataset: str = BUILTIN
) -> Iterator[PlantedWindow]:
    """Windows of `window` tokens, each inside one document, numbered in stream order."""

    n = 0
    for d, doc in enumerate(iter_documents(dataset)):
        enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)
        spans = contiguous_spans([tuple(o) for o in enc["offset_mapping"]], len(doc))
        for start in range(0, len(spans) - window + 1, window):
            yield PlantedWindow(
                n, d, doc, tuple(spans[start : start + window]), tuple(enc["input_ids"][start : start + window])
            )
            n += 1
            if max_windows is not None and n >= max_windows:
                return


def token_activations(chars: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Max character activation per token span (0 for an empty span). Spans are contiguous (as
    `corpus_windows` makes them), so one `maximum.reduceat` over their starts does every token at once."""
    out = np.zeros(len(spans), dtype=np.float32)
    full = [i for i, (s, e) in enumerate(spans) if e > s]
    if full:
        starts = np.array([spans[i][0] for i in full], dtype=np.int64)
        out[full] = np.maximum.reduceat(chars[: spans[full[-1]][1]], starts)
    return out


def rule_activations(rule: PlantedRule, windows: Sequence[PlantedWindow]) -> dict[int, np.ndarray]:
    """Window id -> per-token activations of `rule` (the rule runs once per document)."""
    out, memo = {}, {}
    for w in windows:
        if w.doc not in memo:
            memo = {w.doc: rule.char_activations(w.text)}  # windows come in stream order: one document at a time
        out[w.window_id] = token_activations(memo[w.doc], w.spans)
    return out


def _exemplar(w: PlantedWindow, acts: np.ndarray, source: str, split: str, rank: int) -> Exemplar:
    return Exemplar(
        w.tokens,
        tuple(float(a) for a in acts),
        w.window_id,
        source=source,
        split=split,
        rank=rank,
        token_ids=w.token_ids,
        doc_span=(w.doc, w.doc),
    )


def planted_features(
    tokenizer,
    rules: Iterable[PlantedRule] | None = None,
    window: int = 32,
    n_top: int = 12,
    n_random: int = 12,
    max_windows: int | None = 3000,
    seed: int = 0,
    dataset: str = BUILTIN,
    windows: Sequence[PlantedWindow] | None = None,
) -> list[FeatureExemplars]:
    """One FeatureExemplars per rule (module doc): n_top top and n_random random windows per rule."""

    rules = list(RULES.values() if rules is None else rules)
    windows = list(windows) if windows is not None else list(corpus_windows(tokenizer, window, max_windows, dataset))
    if not windows:
        raise ValueError(f"planted: no window of {window} tokens in {dataset}")
    keys = [r.feature.key for r in rules]
    if len(set(keys)) != len(keys):
        raise ValueError("planted: two rules map to one feature key; rename one")
    out = []
    for rule in rules:
        acts = rule_activations(rule, windows)
        all_acts = np.concatenate([acts[w.window_id] for w in windows]).astype(np.float64)
        top = sorted(
            (w for w in windows if acts[w.window_id].max() > 0),
            key=lambda w: (-float(acts[w.window_id].sum()), w.window_id),
        )[:n_top]
        rnd = random.Random(f"{seed}:{rule.name}").sample(windows, min(n_random, len(windows)))
        picked = [("top", w) for w in top] + [("random", w) for w in rnd]
        docs = np.array([w.doc for _, w in picked], dtype=np.int64)
        content = {}
        split_of = assign_splits(
            np.zeros(len(picked), np.int64),
            docs,
            docs,
            np.array([content.setdefault(w.token_ids, len(content)) for _, w in picked], dtype=np.int64),
            np.array([source == "random" for source, _ in picked], dtype=np.int64),
            len(SPLITS),
        )
        ranks = {"top": 0, "random": 0}
        exemplars = []
        for (source, w), split in zip(picked, split_of):
            exemplars.append(_exemplar(w, acts[w.window_id], source, SPLITS[split], ranks[source]))
            ranks[source] += 1
        stats = FeatureStats(
            max_activation=float(all_acts.max()),
            mean=float(all_acts.mean()),
            variance=float(all_acts.var()),
            n_tokens=int(all_acts.size),
            frac_active=float((all_acts > 0).mean()),
        )
        out.append(FeatureExemplars(rule.feature, tuple(exemplars), stats, dead=not top))
    return out


def explanations_of(rules: Sequence[PlantedRule]) -> dict[str, str]:
    """Feature key -> true explanation."""
    return {r.feature.key: r.explanation for r in rules}


def _mismatched(rule: PlantedRule, rules: Sequence[PlantedRule], n: int, rng: random.Random) -> list[PlantedRule]:
    """`n` other rules to label one of `rule`'s windows with: half (rounded up) of its own family where
    there are any, the rest of any other rule."""
    same = [r for r in rules if r is not rule and r.family == rule.family]
    near = rng.sample(same, min(len(same), -(-n // 2)))
    rest = [r for r in rules if r is not rule and r not in near]
    return near + rng.sample(rest, min(n - len(near), len(rest)))


def simulator_rows(
    tokenizer,
    rules: Sequence[PlantedRule],
    window: int = 32,
    max_windows: int | None = 3000,
    per_rule: int = 8,
    n_random: int = 4,
    others: int = 0,
    seed: int = 0,
    dataset: str = BUILTIN,
    phrasings: Callable[[PlantedRule], Sequence[str]] | None = None,
) -> list[dict]:
    """Training rows (`distill.simulator_data.feature_rows` layout) for a fine-tuned simulator: per rule,
    `per_rule` of its top windows and `n_random` random ones, each labelled under the rule itself (a
    random true phrasing); each top window is also labelled under `others` other rules (their phrasing
    and their own labels, mostly 0: the mismatched rows that teach it to read the explanation rather
    than the text), half of them (rounded up) of the rule's own family where it has others — near
    misses, same grammar and other content, the contrast gate (a) measures. A random window gets no
    mismatched rows (it is mostly silent under any rule: they would add zeros, not contrast).
    `phrasings` says which true phrasings a row may carry (default: the suite's, `all_phrasings`; e.g.
    `paraphrases.paraphrases` to keep the teacher's template wording out of training)."""
    phrasings = phrasings or (lambda r: r.all_phrasings)

    rng = random.Random(seed)
    windows = list(corpus_windows(tokenizer, window, max_windows, dataset))
    by_rule = {r.name: rule_activations(r, windows) for r in rules}
    rows = []
    for rule in rules:
        acts = by_rule[rule.name]
        top = sorted(
            (w for w in windows if acts[w.window_id].max() > 0),
            key=lambda w: (-float(acts[w.window_id].sum()), w.window_id),
        )[:per_rule]
        chosen = [(w, True) for w in top] + [(w, False) for w in rng.sample(windows, min(n_random, len(windows)))]
        for w, is_top in chosen:
            for labeller in [rule] + (_mismatched(rule, rules, others, rng) if is_top else []):
                a = by_rule[labeller.name][w.window_id]
                rows.append(
                    {
                        "feature": labeller.feature.key,
                        "stage": "stage1",
                        "explanation": rng.choice(list(phrasings(labeller))),
                        "explanation_score": float("nan"),
                        "window_id": w.window_id,
                        "split": "explain",
                        "source": "planted",
                        "tokens": list(w.tokens),
                        "activations": [float(x) for x in a],
                        "classes": activation_classes(a, labeller.activation),
                        "max_activation": labeller.activation,
                    }
                )
    return rows
