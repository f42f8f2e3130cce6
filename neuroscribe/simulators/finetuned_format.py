"""The fine-tuned simulator's text format: header, class labels and ids, tokenizer alignment, training rows.

Input: a short header carrying the explanation, then the exemplar's text as plain tokens of the
SIMULATOR's tokenizer; one forward per (explanation, exemplar), the header shared through the KV
cache (`LocalSimulator`'s prefix-shared batched path, reused):

    [tokens the tokenizer prepends, e.g. BOS] "## Neuron Description: {explanation}\\n## Input:\\n" {text}

Output: at each text token's OWN position (the model has seen the token), the logits of 11 fixed
vocabulary ids of the causal LM head are a distribution over activation classes 0..10; the
prediction is its expected value (0..10 scale; Pearson r is scale-free). No new head is added.

Class ids (`class_token_ids`): for class n the first single-token spelling among " n", "n", " word",
"word" (word = zero..ten) not taken by a lower class; any class still without one gets the highest
ordinary (non-special) vocabulary id not yet taken. So numerals seed the classes where the
vocabulary has them (SmolLM2: "0".."9" and " ten"; Llama-3: "0".."10") and any tokenizer gets 11
distinct ids. The ids are fixed at training time and saved in `simulator.json`.

Labels: class = min(10, floor(10 * a / max_a)) for a > 0, but at least 1, and 0 for a <= 0
(`prompts.activation_levels`: the rule the prompts display, so a weak activation is class 1 in both,
never floored to 0); max_a = the feature's maximum activation
(`FeatureStats.max_activation`, over everything collect saw; the max over the feature's exemplars
when the stats are empty). Trained with cross-entropy over the 11 class logits at text positions
only; BOS/header positions are -100 (never in the loss).

Tokenizer alignment: the subject tokens are joined into the text (control markers defused, same
length) and re-tokenised by the simulator's tokenizer. Character spans are made contiguous (a gap
left by trimmed offsets goes to the token after it). A simulator token's label is the max class of
the subject tokens whose spans overlap its span; a subject token's prediction is the max prediction
of the simulator tokens overlapping it (the nearest simulator token when none does). An empty span
is a point: it overlaps the span containing it. So scores stay per subject token.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuroscribe.corpus import context_prefix
from neuroscribe.prompts import activation_levels, clean_explanation_text, escape_control_text
from neuroscribe.records import FeatureExemplars

N_CLASSES = 11
HEADER_TEMPLATE = "## Neuron Description: {explanation}\n## Input:\n"
FORMAT_VERSION = "neuroscribe-simulator/2"  # /2: a positive activation is at least class 1 (was floored to 0)
LABEL_RULE = "min(10, floor(10 * a / max_a)), at least 1 for a > 0, 0 for a <= 0; max_a = the feature's max activation"
IGNORE = -100
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

Span = tuple[int, int]


# ------------------------------------------------------------------------------ format


def header(explanation: str) -> str:
    return HEADER_TEMPLATE.format(explanation=clean_explanation_text(explanation))


def activation_classes(activations: Sequence[float], max_activation: float) -> list[int]:
    """LABEL_RULE (`prompts.activation_levels` with top 10); all 0 when max_a <= 0."""
    return activation_levels(activations, max_activation, N_CLASSES - 1)


def feature_max(record: FeatureExemplars) -> float:
    """max_a of the label rule (`FeatureExemplars.reference_max`)."""
    return record.reference_max


def class_token_ids(tokenizer) -> tuple[int, ...]:
    """The 11 distinct vocabulary ids whose logits are the classes 0..10 (rule in the module doc)."""
    special = set(tokenizer.all_special_ids)
    chosen: list[int | None] = []
    for n in range(N_CLASSES):
        pick = None
        for text in (f" {n}", str(n), f" {_WORDS[n]}", _WORDS[n]):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] not in special and ids[0] not in chosen:
                pick = ids[0]
                break
        chosen.append(pick)
    spare = (i for i in range(len(tokenizer) - 1, -1, -1) if i not in special and i not in chosen)
    out = tuple(i if i is not None else next(spare) for i in chosen)
    assert len(set(out)) == N_CLASSES
    return out


@dataclass(frozen=True)
class SimulatorFormat:
    """What a trained simulator needs at inference (`runs.simulator` writes it as `simulator.json`)."""

    class_token_ids: tuple[int, ...]
    class_tokens: tuple[str, ...]
    base_model: str = ""
    run_id: str = ""
    format_version: str = FORMAT_VERSION
    header_template: str = HEADER_TEMPLATE
    label_rule: str = LABEL_RULE
    alignment: str = "max over overlapping character spans (nearest simulator token when none overlaps)"
    trained_features: tuple[str, ...] = ()  # features whose exemplars it was trained on: never scored by it
    trained_splits: tuple[str, ...] = ()  # the exemplar splits of those features in its training data

    @classmethod
    def for_tokenizer(cls, tokenizer, base_model: str = "") -> SimulatorFormat:
        ids = class_token_ids(tokenizer)
        return cls(ids, tuple(tokenizer.convert_ids_to_tokens(list(ids))), base_model, uuid.uuid4().hex)

    def check_tokenizer(self, tokenizer, where: str) -> None:
        """The ids must still name the same vocabulary entries (a swapped tokenizer would shift them)."""
        seen = tuple(tokenizer.convert_ids_to_tokens(list(self.class_token_ids)))
        if self.class_tokens and seen != self.class_tokens:
            raise ValueError(
                f"{where}/simulator.json: field class_tokens {self.class_tokens} does not match the "
                f"tokenizer's entries {seen} for class_token_ids"
            )


# --------------------------------------------------------------------------- alignment


def subject_spans(tokens: Sequence[str]) -> list[Span]:
    """Character spans of the subject tokens in their joined text."""
    spans, pos = [], 0
    for t in tokens:
        spans.append((pos, pos + len(t)))
        pos += len(t)
    return spans


def contiguous_spans(offsets: Sequence[Span], text_length: int) -> list[Span]:
    """Tokenizer offsets with gaps closed: a gap goes to the token after it, a trailing gap to the last."""
    out, prev_end, last = [], 0, None
    for i, (start, end) in enumerate(offsets):
        if end > start:
            start, prev_end, last = min(start, prev_end), end, i
        out.append((start, end))
    if last is not None and prev_end < text_length:
        out[last] = (out[last][0], text_length)
    return out


def overlap_matrix(rows: Sequence[Span], cols: Sequence[Span]) -> np.ndarray:
    """[len(rows), len(cols)] bool: spans overlap; an empty span is a point inside its container."""
    r = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    c = np.asarray(cols, dtype=np.int64).reshape(-1, 2)
    rs, re_, cs, ce = r[:, :1], r[:, 1:], c[None, :, 0], c[None, :, 1]
    r_empty, c_empty = rs == re_, cs == ce
    both = (rs < ce) & (cs < re_)
    row_point = (cs <= rs) & (rs < ce)
    col_point = (rs <= cs) & (cs < re_)
    return np.where(r_empty & c_empty, False, np.where(r_empty, row_point, np.where(c_empty, col_point, both)))


def align_max(
    values: Sequence[float], source: Sequence[Span], target: Sequence[Span], nearest_fallback: bool = False
) -> list[float | None]:
    """Per target span: max of `values` over the source spans overlapping it; None when none does
    (or the value of the nearest source span, by character distance, with nearest_fallback)."""
    if not target:
        return []
    if not source:
        return [None] * len(target)
    hit = overlap_matrix(target, source)
    vals = np.asarray(values, dtype=np.float64)
    out: list[float | None] = []
    for i, row in enumerate(hit):
        if row.any():
            out.append(float(vals[row].max()))
        elif nearest_fallback:
            s, e = target[i]
            dist = [max(ss - e, s - se, 0) for ss, se in source]
            out.append(float(vals[int(np.argmin(dist))]))
        else:
            out.append(None)
    return out


@dataclass(frozen=True)
class EncodedText:
    """An exemplar's text as simulator tokens, with the spans that align them to subject tokens."""

    ids: tuple[int, ...]
    spans: tuple[Span, ...]  # simulator tokens, contiguous
    subject: tuple[Span, ...]  # subject tokens


def encode_text(tokenizer, tokens: Sequence[str]) -> EncodedText:
    text = escape_control_text("".join(tokens))  # same length, so the spans still hold
    if not text:
        return EncodedText((), (), tuple(subject_spans(tokens)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = contiguous_spans([tuple(o) for o in enc["offset_mapping"]], len(text))
    return EncodedText(tuple(enc["input_ids"]), tuple(spans), tuple(subject_spans(tokens)))


def simulator_labels(encoded: EncodedText, classes: Sequence[int]) -> list[int]:
    """Class per simulator token (max over overlapping subject tokens); IGNORE where nothing overlaps."""
    aligned = align_max(classes, encoded.subject, encoded.spans)
    return [IGNORE if c is None else int(c) for c in aligned]


def subject_predictions(encoded: EncodedText, predicted: Sequence[float]) -> tuple[float, ...]:
    """Per subject token: max prediction of the simulator tokens overlapping it (nearest if none)."""
    if not encoded.ids:
        return tuple(0.0 for _ in encoded.subject)
    return tuple(align_max(predicted, encoded.spans, encoded.subject, nearest_fallback=True))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- training


def prefix_ids(tokenizer, explanation: str) -> list[int]:
    return context_prefix(tokenizer) + tokenizer(header(explanation), add_special_tokens=False)["input_ids"]


def training_example(
    tokenizer, explanation: str, tokens: Sequence[str], classes: Sequence[int], max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels IGNORE on the prefix, the aligned class on each text token."""
    if len(tokens) != len(classes):
        raise ValueError(f"training row: {len(tokens)} tokens but {len(classes)} classes")
    bad = [c for c in classes if not 0 <= int(c) < N_CLASSES]
    if bad:
        raise ValueError(f"training row: classes must be 0..{N_CLASSES - 1}, got {bad[:3]}")
    prefix = prefix_ids(tokenizer, explanation)
    encoded = encode_text(tokenizer, tokens)
    ids = prefix + list(encoded.ids)
    labels = [IGNORE] * len(prefix) + simulator_labels(encoded, classes)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def expected_classes(class_logits: torch.Tensor) -> torch.Tensor:
    """Expected class (0..10) under the softmax of the 11 class logits along the last axis."""
    probs = torch.softmax(class_logits.float(), dim=-1)
    return probs @ torch.arange(N_CLASSES, dtype=probs.dtype, device=probs.device)
