"""The one place where exemplars become prompt text: teacher, student training data and student
inference all format exemplars through these functions, so they always see the same thing.

Bump PROMPT_VERSION on any change to the text produced here; datasets record it.

Activation display scale: integers 0..9, `min(9, floor(10 * relu(a) / max_a))`, except that any
positive activation shows as at least 1, so an exemplar that peaks below a tenth of the max is still
visibly active (OpenAI's floor would show it as all zeros). A single digit because SmolLM2's
tokenizer splits "10" into "1", "0", so a 0..10 scale could not be read from one next-token
distribution. Pearson r is invariant to the affine rescaling, so scores do not change.

Highlighted styles mark the tokens above ACTIVE_FRACTION (a tenth) of the max, the one label rule the
judges use; a positive exemplar that has none marks its own peak tokens instead (`active_marks`).

Token display: a token's newline, tab and carriage return become the visible escapes `\\n`, `\\t`,
`\\r` (other control and line-separator characters become `\\xNN` / `\\uNNNN`), so one exemplar
token is always one prompt line and the simulator's slots line up with the tokens. Spaces are
kept as they are. The display is one-way (a literal backslash is not escaped): nothing parses it
back, slots are found by character offsets.

Chat-control safety: exemplar text may contain a subject model's chat control strings
(`<|im_start|>`, `<|eot_id|>`, `<start_of_turn>`, `[INST]`, `</s>`, `<<SYS>>` ...), possibly
assembled from several tokens. `escape_control_text` swaps the ASCII brackets of such markers for
look-alikes that no tokenizer reads as control tokens and that NFKC leaves alone:
`<` -> `‹` (U+2039), `>` -> `›` (U+203A), `[` -> `⟦` (U+27E6), `]` -> `⟧` (U+27E7). The swap is
one character for one, so it runs on the joined text of an exemplar and is then cut back into
tokens by length. The same applies to explanation text placed in a prompt.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from neuroscribe.configs import PromptStyle
from neuroscribe.protocols import protocol
from neuroscribe.records import POSITIVE_SOURCES, Exemplar, FeatureExemplars, OutputSide, is_activating

PROMPT_VERSION = "v2"  # v2: weak activations display as 1, not 0
MAX_DIGIT = 9
STYLES: tuple[str, ...] = get_args(PromptStyle)  # written once, as the config type
OUTPUT_STYLES: tuple[str, ...] = ("output", "input+output")  # need the store's outputs.parquet
SLOT = "unknown"

_LOOKALIKE = str.maketrans({"<": "\u2039", ">": "\u203a", "[": "\u27e6", "]": "\u27e7"})
_CONTROL = re.compile(
    r"<[|\uff5c][^<>\n]{0,60}?[|\uff5c]>"  # <|im_start|>, <|eot_id|>, DeepSeek's <｜...｜>
    r"|</?(?:s|bos|eos|pad|unk|mask|sep|cls|think|tool_call|tool_response|(?:start|end)_of_\w+)>"
    r"|<</?SYS>>"
    r"|\[/?[A-Z][A-Z_]{2,}\]"  # [INST], [/INST], [SYSTEM_PROMPT], [TOOL_CALLS]
)
_NAMED_WS = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def activation_levels(values: Sequence[float], max_value: float, top: int) -> list[int]:
    """The one grading rule of prompts and the fine-tuned simulator's labels: `min(top, floor(10 * a / max))`
    for a > 0 but at least 1, so any positive activation is visibly above an inactive token; 0 for a <= 0;
    all 0 when max_value <= 0. Prompts use top = MAX_DIGIT (9), the simulator's classes top = 10."""
    if not max_value > 0:
        return [0 for _ in values]
    return [min(top, max(1, math.floor(10 * float(a) / max_value))) if a > 0 else 0 for a in values]


def normalise(values: Sequence[float], max_value: float) -> list[int]:
    """Raw activations -> display digits 0..9 relative to `max_value` (`activation_levels`, module doc)."""
    return activation_levels(values, max_value, MAX_DIGIT)


def escape_control_text(text: str) -> str:
    """Swap the brackets of chat control markers for look-alikes (same length; see module doc)."""
    return _CONTROL.sub(lambda m: m.group(0).translate(_LOOKALIKE), text)


def _escape_whitespace(token: str) -> str:
    out = []
    for ch in token:
        if ch in _NAMED_WS:
            out.append(_NAMED_WS[ch])
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def display_tokens(tokens: Sequence[str], markup_safe: bool = False) -> list[str]:
    """Tokens as shown in any prompt: control markers defused on the joined text, whitespace escaped.

    markup_safe also defuses `<<` / `>>` so they cannot be confused with the `<<tok>>` highlight.
    """
    joined = escape_control_text("".join(tokens))
    if markup_safe:
        joined = joined.replace("<<", "\u2039\u2039").replace(">>", "\u203a\u203a")
    out, pos = [], 0
    for tok in tokens:
        out.append(_escape_whitespace(joined[pos : pos + len(tok)]))
        pos += len(tok)
    return out


def clean_explanation_text(text: str) -> str:
    """An explanation as placed into a prompt: one line, control markers defused."""
    return escape_control_text(" ".join(text.split()))


def active_marks(activations: Sequence[float], max_value: float, weak_peak: bool = True) -> list[bool]:
    """Which tokens the highlighted styles mark `<<like this>>`: those above ACTIVE_FRACTION of the max (the
    one label rule). With `weak_peak`, an exemplar that has none but does fire marks its own peak tokens
    (>= half its peak), so a weakly firing exemplar never looks blank; negatives pass weak_peak=False."""
    marks = [is_activating(a, max_value) for a in activations]
    peak = max(activations, default=0.0)
    if weak_peak and not any(marks) and peak > 0:
        marks = [a >= 0.5 * peak for a in activations]
    return marks


def highlight(tokens: Sequence[str], digits: Sequence[int]) -> str:
    """Exemplar text with each run of marked tokens (digit or mark > 0) wrapped in `<<...>>`."""
    shown = display_tokens(tokens, markup_safe=True)
    out, open_run = [], False
    for tok, d in zip(shown, digits):
        if d > 0 and not open_run:
            out.append("<<")
            open_run = True
        elif d == 0 and open_run:
            out.append(">>")
            open_run = False
        out.append(tok)
    if open_run:
        out.append(">>")
    return "".join(out)


def graded_text(tokens: Sequence[str], digits: Sequence[int], marks: Sequence[bool]) -> str:
    """Exemplar text with each marked token written `<<token=digit>>` (the `graded` style: highlighted's
    marks, `active_marks`, each with its display digit). Only marked tokens carry a digit, so a dense unit
    (most tokens slightly positive, as gated MLP neurons are) costs about what highlighted does, not plain."""
    shown = display_tokens(tokens, markup_safe=True)
    return "".join(f"<<{t}={d}>>" if m and d > 0 else t for t, d, m in zip(shown, digits, marks))


# ----------------------------------------------------------------------------------- explainer

EXPLAINER_SYSTEM = (
    "You are an interpretability researcher. You are shown text excerpts on which one unit of a "
    "language model (a neuron or a sparse-autoencoder feature) is active, and you describe in one "
    "short phrase what the unit responds to. Be specific: name the tokens, words or contexts."
)
_ANSWER_FORMAT = "Answer with a single line in the form\nExplanation: <short description>"


def explainer_prompt_id(style: str) -> str:
    """What a dataset records about the prompt that produced an explanation, e.g. 'plain/v1'."""
    _check_style(style)
    return f"{style}/{PROMPT_VERSION}"


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"prompt style {style!r}: choose one of {list(STYLES)}")


def output_section(output: OutputSide) -> str:
    """The prompt text of a feature's output side (token texts escaped like exemplar text)."""

    def listed(tokens: Sequence[str]) -> str:
        return ", ".join(f'"{t}"' for t in display_tokens(tokens)) or "(none)"

    return (
        "What the unit does to the model's prediction of the next token:\n"
        f"- tokens its output direction promotes: {listed(output.promoted)}\n"
        f"- tokens it suppresses: {listed(output.suppressed)}\n"
        f"- tokens that become more likely when the unit is amplified: {listed(output.raised)}\n"
        f"- tokens that become less likely: {listed(output.lowered)}"
    )


def explainer_exemplars(
    record: FeatureExemplars, exemplars: Sequence[Exemplar] | None = None
) -> tuple[list[Exemplar], list[Exemplar]]:
    """(shown, hard negatives) from the explain split only; refuses any held-out exemplar. Shown: the
    sources the record's sampling protocol shows an explainer (`protocols.Protocol.shown`), in that
    order, strongest first within each."""
    allowed = record.select(split="explain")
    if exemplars is None:
        order = {s: i for i, s in enumerate(protocol(record.protocol).shown)}
        chosen = sorted(
            (e for e in allowed if e.source in order or e.source == "hard_negative"),
            key=lambda e: (order.get(e.source, len(order)), -e.quantile, e.rank),
        )
    else:
        leaked = [e.window_id for e in exemplars if e.split != "explain" or e not in allowed]
        if leaked:
            raise ValueError(
                f"feature {record.feature.key}: explainer given exemplars outside its explain split "
                f"(window ids {leaked[:5]}); held-out exemplars must never reach an explainer"
            )
        chosen = list(exemplars)
    positives = [e for e in chosen if e.source != "hard_negative"]
    negatives = [e for e in chosen if e.source == "hard_negative"]
    if not any(e.source in POSITIVE_SOURCES for e in positives):
        raise ValueError(f"feature {record.feature.key}: no top/quantile/interval exemplars in the explain split")
    return positives, negatives


def explainer_messages(
    record: FeatureExemplars,
    style: str = "plain",
    exemplars: Sequence[Exemplar] | None = None,
    max_exemplars: int | None = None,
) -> list[dict]:
    """Chat messages (system + user) asking for an explanation of one feature.

    Uses only `record.select(split="explain")`; `exemplars`, when given, must come from there. At most
    `max_exemplars` are shown (None: every one the protocol shows; transluce: 15, anthropic: 49).
    plain: one `token<TAB>digit` line per token; graded: running text with each token highlighted would
    mark written `<<token=digit>>` (graded like plain, about as short as highlighted: the anthropic
    protocol's default, `Protocol.prompt_style`); highlighted: running text with `<<active>>` runs (binary);
    contrastive: highlighted positives plus hard negatives, asking what tells them apart; output: only
    what the unit does to the next-token prediction (`output_section`); input+output: highlighted plus that.
    """
    _check_style(style)
    if style in OUTPUT_STYLES and record.output is None:
        raise ValueError(
            f"feature {record.feature.key}: prompt style {style!r} needs the store's output side "
            "(outputs.parquet); collect with --output-side"
        )
    if style == "output":
        return [
            {"role": "system", "content": EXPLAINER_SYSTEM},
            {"role": "user", "content": f"{output_section(record.output)}\n\n{_ANSWER_FORMAT}"},
        ]
    positives, negatives = explainer_exemplars(record, exemplars)
    if style == "contrastive":
        if not negatives:
            raise ValueError(
                f"feature {record.feature.key}: contrastive style needs hard_negative exemplars in the explain split"
            )
        if max_exemplars is not None:
            negatives = negatives[: max(1, max_exemplars // 2)]
            positives = positives[: max(1, max_exemplars - len(negatives))]
    else:
        positives, negatives = positives[:max_exemplars], []
    shown = positives + negatives
    max_value = max((a for e in shown for a in e.activations), default=0.0)

    def digits(e: Exemplar) -> list[int]:
        return normalise(e.activations, max_value)

    def marks(e: Exemplar, positive: bool) -> list[int]:
        return [int(m) for m in active_marks(e.activations, max_value, weak_peak=positive)]

    if style == "plain":
        blocks = []
        for i, e in enumerate(positives, 1):
            lines = "\n".join(f"{t}\t{d}" for t, d in zip(display_tokens(e.tokens), digits(e)))
            blocks.append(f"Excerpt {i}:\n{lines}\n(end of excerpt {i})")
        body = (
            "Each excerpt below lists one token per line, a tab, then the unit's activation on that token "
            f"from 0 (inactive) to {MAX_DIGIT} (strongest).\n\n" + "\n\n".join(blocks)
        )
    elif style == "graded":
        pos = "\n".join(
            f"{i}. {graded_text(e.tokens, digits(e), marks(e, e.source in POSITIVE_SOURCES))}"
            for i, e in enumerate(positives, 1)
        )
        body = (
            "In each excerpt below, the tokens where the unit is active are written <<token=N>>, N its "
            f"activation from 1 (weak) to {MAX_DIGIT} (strongest); unmarked tokens are (nearly) inactive"
            + ("." if all(e.source in POSITIVE_SOURCES for e in positives) else "; some excerpts are random text.")
            + f"\n\nExcerpts:\n{pos}"
        )
    else:
        pos = "\n".join(
            f"{i}. {highlight(e.tokens, marks(e, e.source in POSITIVE_SOURCES))}" for i, e in enumerate(positives, 1)
        )
        if all(e.source in POSITIVE_SOURCES for e in positives):
            body = (
                "In each excerpt below, the tokens where the unit is active are marked <<like this>>.\n\n"
                f"Excerpts where the unit is active:\n{pos}"
            )
        else:  # the protocol also shows random and other-context windows, active or not
            body = (
                "In each excerpt below, the tokens where the unit is active, if any, are marked <<like this>>; "
                f"some excerpts are random text where it may stay silent.\n\nExcerpts:\n{pos}"
            )
        if style == "contrastive":
            neg = "\n".join(f"{i}. {highlight(e.tokens, marks(e, False))}" for i, e in enumerate(negatives, 1))
            body += (
                f"\n\nSimilar excerpts where the unit stays (almost) silent:\n{neg}\n\n"
                "Describe what the unit responds to in the first group but not in the second."
            )
        if style == "input+output":
            body += "\n\n" + output_section(record.output)
    return [
        {"role": "system", "content": EXPLAINER_SYSTEM},
        {"role": "user", "content": f"{body}\n\n{_ANSWER_FORMAT}"},
    ]


# ------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedExplanation:
    text: str
    ok: bool
    error: str = ""
    raw: str = ""


_LABEL = re.compile(r"(?:\[\s*description\s*\]|\bdescription|\bexplanation)\s*:", re.I)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_BOILERPLATE = [
    re.compile(p, re.I)
    for p in (
        r"^(?:the\s+main\s+thing\s+)?(?:this|the)\s+(?:neuron|feature|unit|latent)(?:\s+\w+)?\s+does\s+is\s+(?:to\s+)?"
        r"(?:find|detect|look\s+for)\s+",
        r"^(?:this|the)\s+(?:neuron|feature|unit|latent)(?:\s+(?:mainly|mostly|primarily|strongly|most))?\s+"
        r"(?:activates|fires|responds|reacts|is\s+active|is\s+activated|detects|looks\s+for|tracks|encodes)"
        r"(?:\s+(?:on|to|for|when|in|by|at))?\s*[:,]?\s*",
        r"^(?:it\s+)?(?:activates|fires|responds)\s+(?:on|to|for|when)\s+",
    )
]
_PAIRS = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "*": "*", "_": "_"}
_REFUSAL = re.compile(r"^(?:i'?m sorry|i am sorry|sorry\b|i cannot|i can'?t|as an ai)", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _tidy(text: str) -> str:
    """Strip spaces, a trailing period and balanced enclosing quotes / markdown emphasis."""
    while True:
        before = text
        text = text.strip().rstrip(".").rstrip()
        for left, right in _PAIRS.items():
            if len(text) > 2 * len(left) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : -len(right)]
                break
        if text == before:
            return text


def parse_explanation(raw: str) -> ParsedExplanation:
    """Clean a model's reply into one short explanation, or ok=False with an error (raw kept)."""

    def fail(error: str) -> ParsedExplanation:
        return ParsedExplanation("", False, error, raw)

    text = _THINK.sub("", raw or "").replace("```", "\n").replace("**", "")  # fences, markdown bold
    labels = list(_LABEL.finditer(text))
    if labels:
        text = text[labels[-1].end() :]
    lines = [ln for ln in (_tidy(_BULLET.sub("", ln)) for ln in text.splitlines()) if ln]
    if not lines:
        return fail("empty reply")
    text = lines[0]
    for pattern in _BOILERPLATE:
        text = pattern.sub("", text, count=1)
    text = _tidy(_SENTENCE_END.split(text, maxsplit=1)[0])
    if not text:
        return fail("explanation is empty after removing boilerplate")
    if not any(ch.isalpha() for ch in text):
        return fail(f"explanation has no words: {text!r}")
    if _REFUSAL.match(text):
        return fail(f"reply is a refusal: {text[:80]!r}")
    if len(text) > 500:
        return fail(f"explanation is {len(text)} characters long (no sentence boundary found)")
    return ParsedExplanation(text, True, "", raw)


# ----------------------------------------------------------------------------------- simulator


@dataclass(frozen=True)
class SimulatorPrompt:
    """All-at-once simulator prompt: prefix (shared by all exemplars of one explanation) + body.

    slot_offsets are character offsets into prefix + body where each `unknown` starts, one per
    exemplar token; the prediction for a token is the next-token distribution just before its slot.
    """

    prefix: str
    body: str
    slot_offsets: tuple[int, ...]

    @property
    def text(self) -> str:
        return self.prefix + self.body


SIMULATOR_INSTRUCTIONS = (
    "We study units (neurons or features) of a language model. Each unit responds to some specific "
    "thing in text. Given a description of a unit, predict how strongly it activates on each token "
    "of an excerpt.\n"
    "Each line is a token, a tab, and the unit's activation on that token, from 0 (inactive) to "
    f'{MAX_DIGIT} (strongest). Most tokens are 0. Where a line reads "{SLOT}", the activation is '
    "for you to predict.\n"
)
# Hand-written few-shot units: a token-level one, a topical one and a syntactic one.
_FEW_SHOT: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    (
        "four-digit years, most of all the year in a date",
        (
            ("The", 0),
            (" bridge", 0),
            (" opened", 0),
            (" in", 1),
            (" 1932", 9),
            (",", 0),
            (" closed", 0),
            (" in", 1),
            (" 1987", 8),
            (" and", 0),
            (" reopened", 0),
            (" on", 0),
            (" 4", 2),
            (" May", 3),
            (" 2001", 9),
            (" after", 0),
            (" 14", 0),
            (" months", 0),
            (" of", 0),
            (" repairs", 0),
            (".", 0),
        ),
    ),
    (
        "words about the sea, ships and sailing",
        (
            ("We", 0),
            (" sailed", 6),
            (" past", 0),
            (" the", 0),
            (" harbour", 8),
            (" at", 0),
            (" dawn", 0),
            (";", 0),
            (" the", 0),
            (" waves", 9),
            (" were", 0),
            (" calm", 1),
            (" and", 0),
            (" the", 0),
            (" tide", 7),
            (" was", 0),
            (" low", 1),
            (".", 0),
            (" Breakfast", 0),
            (" was", 0),
            (" bread", 0),
            (".", 0),
        ),
    ),
    (
        "closing brackets that end a function call in code",
        (
            ("result", 0),
            (" =", 0),
            (" max", 0),
            ("(", 0),
            ("values", 0),
            (",", 0),
            (" key", 0),
            ("=", 0),
            ("len", 0),
            (")", 9),
            ("\n", 0),
            ("print", 0),
            ("(", 0),
            ("result", 0),
            ("[", 0),
            ("0", 0),
            ("]", 2),
            (")", 8),
            ("\n", 0),
            ("#", 0),
            (" done", 0),
        ),
    ),
)


def _unit_header(name: str, explanation: str) -> str:
    return f"\nUnit {name}\nDescription: {clean_explanation_text(explanation)}\nActivations:\n"


def _few_shot_text() -> str:
    parts = []
    for i, (explanation, rows) in enumerate(_FEW_SHOT):
        tokens = [t for t, _ in rows]
        lines = "".join(f"{t}\t{d}\n" for t, (_, d) in zip(display_tokens(tokens), rows))
        parts.append(_unit_header(chr(ord("A") + i), explanation) + lines + "End of activations.\n")
    return "".join(parts)


_FEW_SHOT_TEXT = _few_shot_text()


def simulator_prompt(explanation: str, tokens: Sequence[str]) -> SimulatorPrompt:
    """Instructions + fixed few-shot + the explanation as prefix; `token<TAB>unknown` lines as body."""
    prefix = SIMULATOR_INSTRUCTIONS + _FEW_SHOT_TEXT + _unit_header(chr(ord("A") + len(_FEW_SHOT)), explanation)
    body, slots = [], []
    pos = len(prefix)
    for tok in display_tokens(tokens):
        line = f"{tok}\t{SLOT}\n"
        slots.append(pos + len(tok) + 1)
        body.append(line)
        pos += len(line)
    return SimulatorPrompt(prefix, "".join(body), tuple(slots))


# ---------------------------------------------------------------------- detection and fuzzing

JUDGE_SYSTEM = "You judge whether a description of a language-model unit fits a text excerpt. Answer Yes or No."


def detection_messages(explanation: str, tokens: Sequence[str]) -> list[dict]:
    """Does the unit activate anywhere in this excerpt? (delphi's detection, one excerpt per prompt)."""
    text = "".join(display_tokens(tokens, markup_safe=True))
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": f"Unit description: {clean_explanation_text(explanation)}\n\n"
            f"Excerpt: {text}\n\nDoes the unit activate on this excerpt? Answer Yes or No.",
        },
    ]


def fuzzing_messages(explanation: str, tokens: Sequence[str], marked: Sequence[bool]) -> list[dict]:
    """Are the tokens marked `<<...>>` the ones the unit activates on? (delphi's fuzzing)."""
    text = highlight(tokens, [1 if m else 0 for m in marked])
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": f"Unit description: {clean_explanation_text(explanation)}\n\n"
            f"Excerpt with some tokens marked <<like this>>: {text}\n\n"
            "Are the marked tokens the ones this unit activates on? Answer Yes or No.",
        },
    ]
