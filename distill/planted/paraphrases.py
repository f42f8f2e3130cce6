"""Natural paraphrases of every planted rule, written outside the teacher's phrase grammar.

The suite's phrasings (`suite`) and the `patterns:v1` teacher share templates (`the word "X"`,
`the word right after "X"`, `words ending in "-X"`, the bracket sentences). A judge that learned those
templates could reward wording over content. These paraphrases say the same thing another way — no
quoted `"X"` after "the word", no `-X` affix notation, none of the teacher's sentences — so scoring a
rule's paraphrases beside its template phrasing (`eval/gates.py`, gate (c)) tells content from wording.
`TEACHER_GRAMMAR` lists the template forms; a test checks that no paraphrase matches one.
"""

from __future__ import annotations

import re

from .features import PlantedRule
from .suite import MORPHOLOGY, PUNCTUATION, WORD_CLASSES

# the phrase forms the patterns:v1 teacher and the suite's phrasings use (a paraphrase matches none)
TEACHER_GRAMMAR = (
    re.compile(r'\bthe (word|character|token)s? "'),
    re.compile(r'\bwords? right (after|before) "'),
    re.compile(r'"-\w+"|"\w+-"'),
    re.compile(r"^(the )?text inside |words emphasised between|^occurrences of \"|^\"[^\"]+\"$"),
    re.compile(
        r"^(numbers and digits|digits and numbers|capitalised words|words written in capital letters|no clear pattern)$"
    ),
)

SPANS = {
    "in_parentheses": ("whatever is enclosed by round brackets", "the contents of a parenthetical aside"),
    "in_brackets": ("what sits between [ and ]", "the contents of square-bracketed groups, e.g. list items"),
    "in_braces": ("what sits between { and }", "the contents of curly-brace groups such as dict literals"),
    "in_double_quotes": ("quoted material between two double quote marks", "string contents wrapped in double quotes"),
    "in_single_quotes": ("material wrapped in a pair of single quotes", "string contents in single quotes"),
    "in_backticks": ("code spans between backtick marks", "inline code wrapped in backticks"),
    "in_asterisks": ("emphasised words wrapped in stars", "text between a pair of * marks"),
    "after_colon": ("the rest of a clause once a colon has opened it", "what follows a colon, to the sentence's end"),
}
POSITIONS = {
    "sentence_start": ("whichever word opens a new sentence", "the capitalised word that begins each sentence"),
    "sentence_end_word": ("the final word of a sentence, just before its period", "the word that closes a sentence"),
    "before_comma": ("any word that a comma directly follows", "the last word of a clause ended by a comma"),
    "called_name": ("the name of a function at the point where it is called", "identifiers immediately followed by ("),
    "attribute": ("the member name that comes after obj.", "names accessed through a dot on an object"),
    "before_colon": ("any word that a colon directly follows", "the word that introduces a colon"),
    "after_number": ("the word that comes next once a number has been written", "units or nouns following a figure"),
}
SHAPES = {
    "digits": ("any run of numerals", "figures written with 0-9"),
    "multi_digit": ("figures with at least two numerals", "numbers of ten or more"),
    "years": ("years and other figures of exactly four numerals", "four-figure numbers like 1999"),
    "decimals": ("fractional numbers written with a decimal point", "figures such as 2.5 or 0.75"),
    "snake_case": ("identifiers joined by underscores", "names like max_value or read_file"),
    "dotted_names": ("qualified names joined by dots", "paths such as os.path.join"),
    "camel_case": ("names with humps of capitals inside them", "identifiers like ValueError or getItem"),
    "dunder": ("magic method names wrapped in double underscores", "special names such as __len__"),
    "mixed_alnum": ("tokens made of both letters and numerals", "names like md5 or x86"),
    "operators": ("two-character comparison and shift operators", "symbols like == or >="),
}
WHOLE_MORPHOLOGY = {
    "capitalised": ("words that begin with a capital letter", "title-case words"),
    "all_caps": ("words typed entirely in upper case", "acronyms and shouted words"),
    "long_words": ("especially lengthy words", "words with at least ten letters"),
    "short_words": ("tiny words of at most two letters", "one- or two-letter words"),
    "double_letters": ("words containing the same letter twice in a row", "words spelled with a repeated letter"),
}


def paraphrases(rule: PlantedRule) -> tuple[str, ...]:
    """Two natural paraphrases of `rule` (module doc); () for a rule this module does not know."""
    kind, _, name = rule.name.partition(":")
    if kind == "word":
        return (f"fires wherever {name} appears", f"mentions of {name}, whatever the case")
    if kind == "class" and name in WORD_CLASSES:
        words = WORD_CLASSES[name][1]
        return (
            f"words such as {', '.join(words[:3])} or {words[3 % len(words)]}",
            f"members of the set {{{', '.join(words[:5])}}}",
        )
    if kind == "punct" and name in PUNCTUATION:
        return (f"each {name} mark in the text", f"the punctuation symbol {name} wherever it occurs")
    if kind == "span":
        return SPANS.get(name, ())
    if kind == "after":
        return (f"whichever word comes next once {name} has appeared", f"the token following {name}")
    if kind == "position":
        return POSITIONS.get(name, ())
    if kind == "shape":
        return SHAPES.get(name, ())
    if kind == "morph":
        return _morphology(name)
    return ()


def _morphology(name: str) -> tuple[str, ...]:
    if name in WHOLE_MORPHOLOGY:
        return WHOLE_MORPHOLOGY[name]
    where, _, affix = name.partition("_")
    if name not in {n for n, _, _ in MORPHOLOGY} or where not in ("suffix", "prefix"):
        return ()
    if where == "suffix":
        return (f"tokens whose last letters are {affix}", f"any word that finishes with {affix}")
    return (f"tokens whose first letters are {affix}", f"any word that opens with {affix}")


def in_teacher_grammar(text: str) -> bool:
    return any(p.search(text) for p in TEACHER_GRAMMAR)
