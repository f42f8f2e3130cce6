"""`patterns:` — a teacher without a language model, for machines that have no capable one.

It answers an explainer prompt the way a careful reader of the marked tokens would, with template
phrases: it reads the active runs of the prompt's excerpts (`<<marked>>` runs of the highlighted and
contrastive styles, or the non-zero lines of the plain style) and the text around them, and writes
candidate descriptions, each with a support (the share of runs it covers):
- the most frequent marked word, or the three most frequent ones;
- a class the runs share: numbers, one punctuation character, capitalised or all-capital words;
- a shared suffix or prefix of the marked words;
- the word right before every run (`the word right after "X"`) or the character after it;
- a bracket or quote pair that encloses the runs.
Candidates are ranked by support (ties by specificity, then text); sample i is the i-th (`sample_index`),
so best-of-k sees the k best-supported ones, and best-of-1 (greedy or sample 0) is always the top one.
It never sees activations beyond the prompt, so it is an explainer like any other: held-out scoring
tells how good its guesses are. The model name is the template set's version (`patterns:v1`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from neuroscribe.backends.base import Backend, ChatRequest, Completion

VERSION = "v1"
_RUN = re.compile(r"<<(.*?)>>", re.S)
_LINE = re.compile(r"^\d+\.\s(.*)$")
_ENCLOSERS = {
    "(": (")", "the text inside parentheses"),
    "[": ("]", "the text inside square brackets"),
    "{": ("}", "the text inside curly braces"),
    '"': ('"', "text inside double quotation marks"),
    "'": ("'", "text inside single quotation marks"),
    "`": ("`", "text inside backticks"),
    "*": ("*", "words emphasised between asterisks"),
}


@dataclass(frozen=True)
class Run:
    """One active run of an excerpt: its text and the text right before and after it."""

    text: str
    before: str
    after: str

    @property
    def word(self) -> str:
        return self.text.strip()


def active_runs(prompt: str) -> list[Run]:
    """The active runs of the excerpts where the unit is active (a contrastive prompt's silent
    excerpts are left out)."""
    positives = prompt.split("Similar excerpts where the unit stays", 1)[0]
    if "<<" in positives:
        runs = []
        for line in positives.splitlines():
            m = _LINE.match(line.strip())
            if not m:
                continue
            text = m.group(1)
            for r in _RUN.finditer(text):
                plain_before = _RUN.sub(r"\1", text[: r.start()])
                plain_after = _RUN.sub(r"\1", text[r.end() :])
                runs.append(Run(r.group(1), plain_before, plain_after))
        return runs
    return _plain_runs(positives)


def _plain_runs(prompt: str) -> list[Run]:
    """Runs of consecutive non-zero `token<TAB>digit` lines (the plain style)."""
    runs: list[Run] = []
    tokens: list[tuple[str, int]] = []

    def flush() -> None:
        i = 0
        while i < len(tokens):
            if tokens[i][1] == 0:
                i += 1
                continue
            j = i
            while j < len(tokens) and tokens[j][1] > 0:
                j += 1
            runs.append(
                Run(
                    "".join(t for t, _ in tokens[i:j]),
                    "".join(t for t, _ in tokens[:i]),
                    "".join(t for t, _ in tokens[j:]),
                )
            )
            i = j
        tokens.clear()

    for line in prompt.splitlines():
        token, tab, digit = line.rpartition("\t")
        if tab and digit.strip().isdigit():
            tokens.append((token, int(digit)))
        elif tokens:
            flush()
    flush()
    return runs


def _share(runs: Sequence[Run], test: Callable[[Run], bool]) -> float:
    return sum(map(test, runs)) / len(runs)


def _quoted(words: Sequence[str]) -> str:
    q = [f'"{w}"' for w in words]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + f" and {q[-1]}"


def candidates(runs: Sequence[Run]) -> list[tuple[float, str]]:
    """(support, description) for every template that applies, best first (module doc)."""
    runs = [r for r in runs if r.word]
    if not runs:
        return [(0.0, "no clear pattern")]
    out: dict[str, tuple[float, int]] = {}

    def add(text: str, support: float, specificity: int) -> None:
        if support > 0 and (text not in out or out[text][0] < support):
            out[text] = (support, specificity)

    words = Counter(r.word.lower() for r in runs)
    top = [w for w, _ in words.most_common(3) if len(w) <= 24] or [words.most_common(1)[0][0][:24]]
    first = top[0]
    if first.isdigit():
        add("digits and numbers", _share(runs, lambda r: r.word.isdigit()), 2)
    elif len(first) == 1 and not first.isalnum():
        add(f'the character "{first}"', words[first] / len(runs), 3)
    else:
        add(f'the word "{first}"', words[first] / len(runs), 3)
    if len(top) > 1:
        add(f"the words {_quoted(top)}", sum(words[w] for w in top) / len(runs), 2)
    symbols = Counter(c for r in runs for c in set(r.word) if not c.isalnum() and not c.isspace())
    for sym, _ in symbols.most_common(3):  # a token may hold several symbols ('",'): each is a candidate
        if _share(runs, lambda r, s=sym: s in r.word) >= 0.6:
            add(f'the character "{sym}"', _share(runs, lambda r, s=sym: s in r.word), 3)
    if _share(runs, lambda r: any(c.isdigit() for c in r.word)) >= 0.6:
        add("numbers and digits", _share(runs, lambda r: any(c.isdigit() for c in r.word)), 1)
    if _share(runs, lambda r: r.word[:1].isupper()) >= 0.6:
        caps = _share(runs, lambda r: len(r.word) > 1 and r.word.isupper())
        add(
            "words written in capital letters" if caps >= 0.6 else "capitalised words",
            _share(runs, lambda r: r.word[:1].isupper()),
            1,
        )
    alpha = [r.word.lower() for r in runs if r.word.isalpha() and len(r.word) > 3]
    for template, cut in (
        ('words ending in "-{}"', lambda w, n: w[-n:]),
        ('words starting with "{}-"', lambda w, n: w[:n]),
    ):
        affixes = Counter(a for w in alpha for a in {cut(w, n) for n in (2, 3, 4)})
        if affixes:  # the most shared affix; the longest of equally shared ones
            affix, count = max(affixes.items(), key=lambda kv: (kv[1], len(kv[0])))
            if count >= 2 and count / len(runs) >= 0.5:
                add(template.format(affix), count / len(runs), 2)
    before = Counter((re.findall(r"[A-Za-z]+", r.before[-30:]) or [""])[-1].lower() for r in runs if r.before.strip())
    if before:
        prev, count = before.most_common(1)[0]
        if prev and count >= 2:
            add(f'the word right after "{prev}"', count / len(runs), 2)
    after = Counter(r.after.lstrip()[:1] for r in runs if r.after.strip())
    if after:
        nxt, count = after.most_common(1)[0]
        if nxt and not nxt.isalnum() and count >= 2:
            add(f'the word right before "{nxt}"', count / len(runs), 2)
    for opener, (closer, text) in _ENCLOSERS.items():
        inside = _share(
            runs,
            lambda r, o=opener, c=closer: (
                o in r.before[-40:] and c in r.after[:40] and r.before.rfind(o) > r.before.rfind(c)
            ),
        )
        if inside >= 0.5:
            add(text, inside, 2)
    return [(s, t) for t, (s, _) in sorted(out.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))]


class PatternBackend(Backend):
    """Best-of-k from template phrases over the prompt's marked tokens (module doc)."""

    kind = "patterns"

    def configure(self, **_ignored) -> None:
        if self.model != VERSION:
            raise ValueError(f"patterns:{self.model}: this neuroscribe has the template set patterns:{VERSION}")

    def _generate(self, requests: Sequence[ChatRequest], on_done: Callable[[int, Completion], None]) -> None:
        for i, request in enumerate(requests):
            prompt = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
            ranked = candidates(active_runs(prompt))
            text = ranked[min(request.sample_index, len(ranked) - 1)][1]
            on_done(i, Completion(f"Explanation: {text}", len(prompt) // 4, len(text) // 4 + 1))

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        return 0.0
