"""A fine-tuned per-token activation simulator (Transluce-style), its training format and read-out.

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

Labels: class = min(10, floor(10 * relu(a) / max_a)), max_a = the feature's maximum activation
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

import json
import math
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from neuroscribe.prompts import clean_explanation_text, escape_control_text
from neuroscribe.records import Exemplar, FeatureExemplars, SimulatedExemplar
from neuroscribe.simulator import LocalSimulator

N_CLASSES = 11
HEADER_TEMPLATE = "## Neuron Description: {explanation}\n## Input:\n"
FORMAT_VERSION = "neuroscribe-simulator/1"
CONFIG_FILE = "simulator.json"
IGNORE = -100
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

Span = tuple[int, int]


# ------------------------------------------------------------------------------ format


def header(explanation: str) -> str:
    return HEADER_TEMPLATE.format(explanation=clean_explanation_text(explanation))


def activation_classes(activations: Sequence[float], max_activation: float) -> list[int]:
    """min(10, floor(10 * relu(a) / max_a)); all 0 when max_a <= 0."""
    if not max_activation > 0:
        return [0 for _ in activations]
    return [min(N_CLASSES - 1, math.floor(10 * max(0.0, float(a)) / max_activation)) for a in activations]


def feature_max(record: FeatureExemplars) -> float:
    """max_a of the label rule: the feature's collected max, else the max over its exemplars."""
    if record.stats.max_activation > 0:
        return float(record.stats.max_activation)
    return max((a for e in record.exemplars for a in e.activations), default=0.0)


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
    """What a trained simulator needs at inference, saved as `simulator.json` beside the weights."""

    class_token_ids: tuple[int, ...]
    class_tokens: tuple[str, ...]
    base_model: str = ""
    run_id: str = ""
    format_version: str = FORMAT_VERSION
    header_template: str = HEADER_TEMPLATE
    label_rule: str = "min(10, floor(10 * relu(a) / max_a)), max_a = the feature's max activation"
    alignment: str = "max over overlapping character spans (nearest simulator token when none overlaps)"

    @classmethod
    def for_tokenizer(cls, tokenizer, base_model: str = "") -> "SimulatorFormat":
        ids = class_token_ids(tokenizer)
        return cls(ids, tuple(tokenizer.convert_ids_to_tokens(list(ids))), base_model, uuid.uuid4().hex)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        path.write_text(json.dumps({**asdict(self), "n_classes": N_CLASSES}, indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "SimulatorFormat":
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {folder} is not a fine-tuned simulator "
                                    "(train one with `python -m neuroscribe.train.simulator`)")
        data = json.loads(path.read_text())
        data.pop("n_classes", None)
        if data.get("format_version") != FORMAT_VERSION or data.get("header_template") != HEADER_TEMPLATE:
            raise ValueError(f"{path}: field format_version/header_template is {data.get('format_version')!r}; "
                             f"this neuroscribe reads {FORMAT_VERSION!r} with its own header")
        ids = data.get("class_token_ids")
        if not isinstance(ids, list) or len(set(ids)) != N_CLASSES:
            raise ValueError(f"{path}: field class_token_ids must list {N_CLASSES} distinct ids, got {ids!r}")
        data["class_token_ids"], data["class_tokens"] = tuple(ids), tuple(data.get("class_tokens", ()))
        return cls(**data)

    def check_tokenizer(self, tokenizer, where: str) -> None:
        """The ids must still name the same vocabulary entries (a swapped tokenizer would shift them)."""
        seen = tuple(tokenizer.convert_ids_to_tokens(list(self.class_token_ids)))
        if self.class_tokens and seen != self.class_tokens:
            raise ValueError(f"{where}/{CONFIG_FILE}: field class_tokens {self.class_tokens} does not match the "
                             f"tokenizer's entries {seen} for class_token_ids")


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


def align_max(values: Sequence[float], source: Sequence[Span], target: Sequence[Span],
              nearest_fallback: bool = False) -> list[float | None]:
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
    from neuroscribe.corpus import context_prefix

    return context_prefix(tokenizer) + tokenizer(header(explanation), add_special_tokens=False)["input_ids"]


def training_example(tokenizer, explanation: str, tokens: Sequence[str], classes: Sequence[int],
                     max_length: int | None = None) -> tuple[list[int], list[int]]:
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


class SimulatorCollator:
    """Rows with `explanation`, `tokens`, `classes` -> right-padded input_ids / attention_mask / labels."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        pairs = [training_example(self.tokenizer, r["explanation"], r["tokens"], r["classes"], self.max_length)
                 for r in rows]
        width = max(len(ids) for ids, _ in pairs)
        input_ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(pairs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class ClassCrossEntropy:
    """Trainer `compute_loss_func`: cross-entropy over the 11 class logits at labelled positions.

    Summed and divided by the labelled-token count of the whole accumulated batch (the Trainer's
    `num_items_in_batch`), so gradient accumulation gives the same loss as one big batch.
    """

    def __init__(self, class_ids: Sequence[int]):
        self.class_ids = list(class_ids)

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"][..., self.class_ids].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, N_CLASSES), labels.reshape(-1).to(logits.device),
                                                 ignore_index=IGNORE, reduction="sum")
        n = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE).sum()
        return loss / torch.as_tensor(n, device=loss.device).clamp(min=1)


def expected_classes(class_logits: torch.Tensor) -> torch.Tensor:
    """Expected class (0..10) under the softmax of the 11 class logits along the last axis."""
    probs = torch.softmax(class_logits.float(), dim=-1)
    return probs @ torch.arange(N_CLASSES, dtype=probs.dtype, device=probs.device)


# ---------------------------------------------------------------------------- inference


class FinetunedSimulator(LocalSimulator):
    """The trained simulator: `LocalSimulator`'s prefix-shared batched forward (or mode="full"), read
    at every text token's own position through the 11 class ids instead of the ten digit ids."""

    def __init__(self, model, tokenizer, fmt: SimulatorFormat, batch_size: int = 8, spec: str = "",
                 mode: str = "shared_prefix"):
        super().__init__(model, tokenizer, batch_size=batch_size, spec=spec or "finetuned", mode=mode)
        self.format = fmt
        self.digit_ids = list(fmt.class_token_ids)  # the head rows the inherited read-out uses

    def class_logits(self, explanation: str, encoded: Sequence[EncodedText]) -> list[torch.Tensor]:
        """[n_simulator_tokens, 11] logits per encoded text (empty texts give an empty tensor)."""
        prefix = prefix_ids(self.tokenizer, explanation)
        todo = [i for i, e in enumerate(encoded) if e.ids]
        bodies = [(list(encoded[i].ids), list(range(len(encoded[i].ids)))) for i in todo]
        out = [torch.zeros((0, N_CLASSES)) for _ in encoded]
        if not bodies:
            return out
        self._check_length(len(prefix) + max(len(ids) for ids, _ in bodies))
        if self.mode == "full":
            logits = [self._full_digit_logits(prefix, ids, readers) for ids, readers in bodies]
        else:
            logits = self._shared_prefix_digit_logits(prefix, bodies)
        for i, lg in zip(todo, logits):
            out[i] = lg.float().cpu()
        return out

    def simulate(self, explanation: str, exemplars: Sequence[Exemplar]) -> list[SimulatedExemplar]:
        """Expected class (0..10) at every SUBJECT token of every exemplar, in input order."""
        leaked = [e.window_id for e in exemplars if e.split == "explain"]
        if leaked:
            raise ValueError(f"simulator given explain-split exemplars (window ids {leaked[:5]}); "
                             "a simulator only ever sees held-out exemplars")
        encoded = [encode_text(self.tokenizer, e.tokens) for e in exemplars]
        logits = self.class_logits(explanation, encoded)
        return [
            SimulatedExemplar(e.window_id, e.source, tuple(e.activations),
                              subject_predictions(enc, expected_classes(lg).tolist()))
            for e, enc, lg in zip(exemplars, encoded, logits)
        ]


def load_finetuned_simulator(path: str, dtype: str = "float32", batch_size: int = 8, device: str = "cpu",
                             mode: str = "shared_prefix") -> FinetunedSimulator:
    """Load a trained simulator folder (LoRA adapter merged into its base, or full weights).

    `path` may end in `#RUN_ID` to pin a run: loading fails if the folder now holds another one.
    The spec is `finetuned:PATH#RUN_ID` (+ `@DTYPE` unless float32, as for `hf:` specs), so cached
    scores are keyed by the trained weights' run and the precision; a spec loads back as a path.
    """
    from neuroscribe.models import load_model, parse_dtype

    folder, _, pinned = str(path).partition("#")
    pinned = pinned.partition("@")[0]
    fmt = SimulatorFormat.load(folder)
    if pinned and pinned != fmt.run_id[: len(pinned)]:
        raise ValueError(f"{folder}/{CONFIG_FILE}: field run_id is {fmt.run_id!r}, not the pinned {pinned!r}")
    model, tok = load_model(folder, dtype=dtype, device=device)
    if hasattr(model, "merge_and_unload"):  # PEFT: fold the adapter in once, inference needs no LoRA matmuls
        model = model.merge_and_unload().eval()
    fmt.check_tokenizer(tok, folder)
    weights = str(parse_dtype(dtype)).removeprefix("torch.")
    spec = f"finetuned:{folder}#{fmt.run_id[:12]}" + ("" if weights == "float32" else f"@{weights}")
    return FinetunedSimulator(model, tok, fmt, batch_size=batch_size, mode=mode, spec=spec)
