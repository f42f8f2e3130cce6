"""Planted features: units whose truth is known, for measuring simulators and explainers.

A planted rule marks character spans of a document with an activation (a regex match, or one of
its groups). Rules are defined on characters, so they hold for any tokenizer: a token's
activation is the max over the characters of its span (0 when no marked character falls inside).
Each rule carries its TRUE explanation, the text a perfect explainer would write.

`planted_features(tokenizer, rules)` turns rules into `FeatureExemplars` exactly like `collect`
would for a real unit: documents of the corpus cut into windows of `window` tokens (a window never
crosses a document), per rule the top windows (most activation, then window id) and random windows
(seeded), each source assigned to the splits explain/score/test by stride so every split gets
strong and weak windows alike. Exemplar tokens are slices of the document text, so they join back
to it exactly. Feature ids: `FeatureId("planted", 0, i)` for the i-th rule given.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from neuroscribe.corpus import BUILTIN, iter_documents
from neuroscribe.records import SPLITS, Exemplar, FeatureExemplars, FeatureId, FeatureStats

KIND = "planted"


@dataclass(frozen=True)
class PlantedRule:
    """Characters matched by `pattern` (its `group`, 0 = the whole match) get `activation`."""

    name: str
    explanation: str
    pattern: str
    group: int = 0
    flags: int = 0
    activation: float = 1.0

    def char_activations(self, text: str) -> np.ndarray:
        acts = np.zeros(len(text), dtype=np.float32)
        for m in re.finditer(self.pattern, text, self.flags):
            start, end = m.span(self.group)
            acts[start:end] = np.maximum(acts[start:end], self.activation)
        return acts


def word_rule(word: str) -> PlantedRule:
    """The whole word `word`, any case."""
    return PlantedRule(f"word:{word}", f'the word "{word}"', rf"\b{re.escape(word)}\b", flags=re.IGNORECASE)


RULES: dict[str, PlantedRule] = {
    r.name: r
    for r in (
        PlantedRule("digits", "digits and numbers", r"\d+"),
        PlantedRule("parentheses", "the text inside parentheses", r"\(([^()]+)\)", group=1),
        PlantedRule("double_quotes", "text inside double quotation marks", r'"([^"\n]+)"', group=1),
        PlantedRule(
            "sentence_end", "the full stop or question mark that ends a sentence", r"(?<=[a-z)\]*])[.?!](?=\s|$)"
        ),
        PlantedRule("capitalised", "capitalised words (starting with an upper-case letter)", r"\b[A-Z][a-z]+\b"),
        PlantedRule("after_the", 'the word right after "the"', r"\b[Tt]he\s+([A-Za-z]+)", group=1),
        PlantedRule("comma", "commas", r","),
        PlantedRule("ing_words", 'words ending in "-ing"', r"\b[A-Za-z]+ing\b"),
        PlantedRule("snake_case", "identifiers with underscores, like snake_case names", r"\b\w+_\w+\b"),
        PlantedRule("colon", "colons", r":"),
        PlantedRule("long_words", "long words of ten or more letters", r"\b[a-zA-Z]{10,}\b"),
        PlantedRule("acronyms", "words written in all capital letters, such as acronyms", r"\b[A-Z]{2,}\b"),
        PlantedRule("asterisks", "words emphasised between asterisks", r"\*([^*\s][^*]*)\*", group=1),
        PlantedRule("after_a", 'the word right after "a" or "an"', r"\b[Aa]n?\s+([A-Za-z]+)", group=1),
    )
}


@dataclass(frozen=True)
class _Window:
    window_id: int
    text: str  # the document
    spans: tuple[tuple[int, int], ...]  # token character spans in `text`, contiguous
    token_ids: tuple[int, ...]


def corpus_windows(
    tokenizer, window: int = 32, max_windows: int | None = None, dataset: str = BUILTIN
) -> Iterator[_Window]:
    """Windows of `window` tokens, each inside one document, numbered in stream order."""
    from neuroscribe.simulators.finetuned_format import contiguous_spans

    n = 0
    for doc in iter_documents(dataset):
        enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)
        spans = contiguous_spans([tuple(o) for o in enc["offset_mapping"]], len(doc))
        for start in range(0, len(spans) - window + 1, window):
            yield _Window(n, doc, tuple(spans[start : start + window]), tuple(enc["input_ids"][start : start + window]))
            n += 1
            if max_windows is not None and n >= max_windows:
                return


def token_activations(chars: np.ndarray, spans: Sequence[tuple[int, int]]) -> list[float]:
    """Max character activation per token span (0 for an empty span)."""
    return [float(chars[s:e].max()) if e > s else 0.0 for s, e in spans]


def _exemplar(w: _Window, acts: list[float], source: str, split: str, rank: int) -> Exemplar:
    tokens = tuple(w.text[s:e] for s, e in w.spans)
    return Exemplar(tokens, tuple(acts), w.window_id, source=source, split=split, rank=rank, token_ids=w.token_ids)


def planted_features(
    tokenizer,
    rules: Iterable[PlantedRule] | None = None,
    window: int = 32,
    n_top: int = 12,
    n_random: int = 12,
    max_windows: int | None = 3000,
    seed: int = 0,
    dataset: str = BUILTIN,
) -> list[FeatureExemplars]:
    """One FeatureExemplars per rule (module doc): n_top top and n_random random windows per rule,
    each source split over explain/score/test by stride."""
    rules = list(RULES.values() if rules is None else rules)
    windows = list(corpus_windows(tokenizer, window, max_windows, dataset))
    if not windows:
        raise ValueError(f"planted: no window of {window} tokens in {dataset}")
    by_doc: dict[str, list[_Window]] = {}
    for w in windows:
        by_doc.setdefault(w.text, []).append(w)
    out = []
    for index, rule in enumerate(rules):
        acts: dict[int, list[float]] = {}
        for doc, ws in by_doc.items():
            chars = rule.char_activations(doc)
            for w in ws:
                acts[w.window_id] = token_activations(chars, w.spans)
        all_acts = np.array([a for w in windows for a in acts[w.window_id]], dtype=np.float64)
        top = sorted(
            (w for w in windows if max(acts[w.window_id]) > 0), key=lambda w: (-sum(acts[w.window_id]), w.window_id)
        )[:n_top]
        rng = random.Random(f"{seed}:{rule.name}")
        chosen_top = {w.window_id for w in top}
        rest = [w for w in windows if w.window_id not in chosen_top]
        rnd = rng.sample(rest, min(n_random, len(rest)))
        exemplars = [_exemplar(w, acts[w.window_id], "top", SPLITS[i % len(SPLITS)], i) for i, w in enumerate(top)]
        exemplars += [_exemplar(w, acts[w.window_id], "random", SPLITS[i % len(SPLITS)], i) for i, w in enumerate(rnd)]
        stats = FeatureStats(
            max_activation=float(all_acts.max()),
            mean=float(all_acts.mean()),
            variance=float(all_acts.var()),
            n_tokens=int(all_acts.size),
            frac_active=float((all_acts > 0).mean()),
        )
        out.append(FeatureExemplars(FeatureId(KIND, 0, index), tuple(exemplars), stats, dead=not top))
    return out


def explanations_of(rules: Sequence[PlantedRule]) -> dict[str, str]:
    """Feature key -> true explanation, for rules passed to `planted_features` in this order."""
    return {FeatureId(KIND, 0, i).key: r.explanation for i, r in enumerate(rules)}
