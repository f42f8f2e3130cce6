"""The planted-rule suite: many kinds of rule, each with several true phrasings, split three ways.

Kinds (`family`): single words; semantic word classes (colours, Python keywords, negations, ...);
punctuation characters; spans (inside brackets, quotes, backticks); positions (the word after X, the
first word of a sentence, the word before a comma, a called name); morphology (suffixes, prefixes,
capitalisation, length); shapes of tokens (numbers, years, snake_case, dotted names). `suite(seed)`
returns every rule; `split_suite` deals them, within each family by a seeded hash of the rule's name
(so the deal does not depend on the order rules are listed in), into
- `simulator`: the rules a fine-tuned simulator is trained on;
- `explainer`: the rules whose planted features join the explain run and the student's training data;
- `heldout`: rules nobody trains on: the simulator's calibration and the eval's known-answer features.
Every family is represented in each part, so held-out rules are new instances of known kinds; a
separate suite of other kinds (kept outside the project) measures generalisation to new kinds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .features import PlantedRule

WORD_CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "colours": (
        "colour words",
        ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "grey", "brown"),
    ),
    "number_words": (
        "numbers written out as words",
        (
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "zero",
            "hundred",
            "single",
            "double",
        ),
    ),
    "python_keywords": (
        "Python keywords such as def, class and return",
        (
            "def",
            "class",
            "return",
            "import",
            "lambda",
            "yield",
            "pass",
            "raise",
            "try",
            "except",
            "finally",
            "global",
            "nonlocal",
            "assert",
            "elif",
            "del",
            "async",
            "await",
        ),
    ),
    "builtin_types": (
        "names of built-in types such as int, str and list",
        ("int", "str", "list", "dict", "tuple", "set", "float", "bool", "bytes", "frozenset", "complex", "bytearray"),
    ),
    "constants": ("the constants True, False and None", ("True", "False", "None")),
    "pronouns": (
        "pronouns such as it, they and you",
        ("it", "they", "he", "she", "we", "you", "its", "their", "them", "itself", "themselves"),
    ),
    "articles": ("the articles a, an and the", ("a", "an", "the")),
    "prepositions": (
        "prepositions such as in, on, of and to",
        (
            "in",
            "on",
            "of",
            "to",
            "for",
            "with",
            "from",
            "by",
            "at",
            "into",
            "over",
            "under",
            "between",
            "within",
            "through",
            "after",
            "before",
        ),
    ),
    "conjunctions": (
        "conjunctions such as and, or and but",
        ("and", "or", "but", "nor", "yet", "so", "because", "although", "unless", "whereas"),
    ),
    "conditionals": (
        "words of condition such as if, when, unless and otherwise",
        ("if", "when", "unless", "otherwise", "whenever", "else", "elif", "provided"),
    ),
    "modals": (
        "modal verbs such as can, may, must and should",
        ("can", "could", "may", "might", "must", "should", "would", "will", "shall"),
    ),
    "comparison": (
        "words of comparison such as greater, less and equal",
        ("more", "less", "greater", "smaller", "equal", "larger", "fewer", "same", "different", "identical", "than"),
    ),
    "errors": (
        "words about errors and exceptions",
        (
            "error",
            "errors",
            "exception",
            "exceptions",
            "raised",
            "fail",
            "fails",
            "failure",
            "invalid",
            "warning",
            "traceback",
        ),
    ),
    "quantifiers": (
        "quantifiers such as all, any, each and every",
        ("all", "any", "each", "every", "some", "many", "most", "none", "several", "both", "few"),
    ),
    "negation": (
        "negation words such as not, no and never",
        ("not", "no", "never", "nothing", "neither", "nor", "without", "cannot"),
    ),
    "files": (
        "words about files, input and output",
        (
            "file",
            "files",
            "read",
            "write",
            "open",
            "close",
            "input",
            "output",
            "print",
            "stream",
            "buffer",
            "path",
            "directory",
        ),
    ),
    "memory": (
        "words about memory, references and copies",
        ("memory", "reference", "references", "pointer", "garbage", "allocated", "copy", "copies", "shared"),
    ),
    "arithmetic": (
        "words about arithmetic such as sum, division and power",
        (
            "sum",
            "division",
            "multiplication",
            "addition",
            "subtraction",
            "remainder",
            "modulo",
            "power",
            "product",
            "quotient",
            "negative",
            "positive",
        ),
    ),
    "collections": (
        "words for collections such as sequence, list and mapping",
        (
            "sequence",
            "sequences",
            "mapping",
            "mappings",
            "collection",
            "array",
            "container",
            "containers",
            "items",
            "elements",
            "keys",
            "values",
        ),
    ),
    "calling": (
        "words about calling functions and returning",
        (
            "call",
            "called",
            "calls",
            "calling",
            "returns",
            "returned",
            "invoke",
            "invoked",
            "evaluate",
            "evaluated",
            "evaluation",
        ),
    ),
    "naming": (
        "words about names and binding",
        (
            "name",
            "names",
            "named",
            "identifier",
            "identifiers",
            "binding",
            "bound",
            "namespace",
            "scope",
            "variable",
            "variables",
        ),
    ),
    "time_words": (
        "words about time and order such as before, after and first",
        ("before", "after", "first", "last", "then", "next", "later", "finally", "previous", "until", "once"),
    ),
    "size_words": (
        "words about size such as large, small and long",
        ("large", "small", "long", "short", "big", "huge", "tiny", "wide", "narrow", "empty"),
    ),
    "truth_words": (
        "words about truth such as true, false and valid",
        ("true", "false", "valid", "correct", "wrong", "right", "truth", "boolean"),
    ),
}

PUNCTUATION: dict[str, str] = {
    ",": "commas",
    ".": "full stops and dots",
    ":": "colons",
    ";": "semicolons",
    "(": "opening parentheses",
    ")": "closing parentheses",
    "[": "opening square brackets",
    "]": "closing square brackets",
    "{": "opening curly braces",
    "}": "closing curly braces",
    '"': "double quotation marks",
    "'": "apostrophes",
    "`": "backticks",
    "=": "equals signs",
    "+": "plus signs",
    "-": "hyphens and minus signs",
    "*": "asterisks",
    "/": "slashes",
    "%": "percent signs",
    "<": "less-than signs",
    ">": "greater-than signs",
    "_": "underscores",
    "#": "hash signs",
    "@": "at signs",
    "!": "exclamation marks",
    "?": "question marks",
    "|": "vertical bars",
}

SPANS = (  # (name, explanation, pattern with one group)
    ("in_parentheses", "the text inside parentheses", r"\(([^()\n]+)\)"),
    ("in_brackets", "the text inside square brackets", r"\[([^\[\]\n]+)\]"),
    ("in_braces", "the text inside curly braces", r"\{([^{}\n]+)\}"),
    ("in_double_quotes", "text inside double quotation marks", r'"([^"\n]+)"'),
    ("in_single_quotes", "text inside single quotation marks", r"(?<!\w)'([^'\n]+)'(?!\w)"),
    ("in_backticks", "text inside backticks", r"`([^`\n]+)`"),
    ("in_asterisks", "words emphasised between asterisks", r"\*([^*\s][^*\n]*)\*"),
    ("after_colon", "the text after a colon, up to the end of the sentence", r":\s+([^.:\n]+)"),
)

POSITION_WORDS = (
    "the",
    "a",
    "an",
    "of",
    "to",
    "is",
    "in",
    "and",
    "be",
    "as",
    "by",
    "not",
    "for",
    "are",
    "with",
    "that",
    "this",
    "which",
    "can",
    "from",
)
POSITIONS = (  # (name, explanation, pattern with one group)
    ("sentence_start", "the first word of a sentence", r"(?:^|[.!?]\s+)([A-Z][a-z]+)"),
    ("sentence_end_word", "the last word before a full stop", r"\b([A-Za-z]+)\.(?=\s|$)"),
    ("before_comma", "the word right before a comma", r"\b([A-Za-z]+),"),
    ("called_name", "a name followed by an opening parenthesis, as in a call f(x)", r"\b([A-Za-z_]\w*)\("),
    ("attribute", "the attribute name after a dot, as in obj.attr", r"\w\.([A-Za-z_]\w*)"),
    ("before_colon", "the word right before a colon", r"\b([A-Za-z]+):"),
    ("after_number", "the word right after a number", r"\d\s+([A-Za-z]+)"),
)

MORPHOLOGY = (  # (name, explanation, pattern)
    ("suffix_ing", 'words ending in "-ing"', r"\b[A-Za-z]+ing\b"),
    ("suffix_ed", 'words ending in "-ed"', r"\b[A-Za-z]+ed\b"),
    ("suffix_ly", 'adverbs ending in "-ly"', r"\b[A-Za-z]+ly\b"),
    ("suffix_tion", 'words ending in "-tion"', r"\b[A-Za-z]+tions?\b"),
    ("suffix_able", 'words ending in "-able" or "-ible"', r"\b[A-Za-z]+[ai]ble\b"),
    ("suffix_ment", 'words ending in "-ment"', r"\b[A-Za-z]+ments?\b"),
    ("suffix_er", 'words ending in "-er"', r"\b[A-Za-z]+ers?\b"),
    ("suffix_al", 'words ending in "-al"', r"\b[A-Za-z]+al\b"),
    ("suffix_ive", 'words ending in "-ive"', r"\b[A-Za-z]+ive\b"),
    ("suffix_ity", 'words ending in "-ity"', r"\b[A-Za-z]+ity\b"),
    ("suffix_es", 'plural words ending in "-es"', r"\b[A-Za-z]+es\b"),
    ("prefix_un", 'words starting with "un-"', r"\b[Uu]n[a-z]{3,}\b"),
    ("prefix_re", 'words starting with "re-"', r"\b[Rr]e[a-z]{3,}\b"),
    ("prefix_in", 'words starting with "in-" or "im-"', r"\b[Ii][nm][a-z]{4,}\b"),
    ("prefix_de", 'words starting with "de-"', r"\b[Dd]e[a-z]{3,}\b"),
    ("prefix_sub", 'words starting with "sub-"', r"\b[Ss]ub[a-z]{2,}\b"),
    ("capitalised", "capitalised words (an upper-case letter, then lower-case ones)", r"\b[A-Z][a-z]+\b"),
    ("all_caps", "words written in capital letters only, such as acronyms", r"\b[A-Z]{2,}\b"),
    ("long_words", "long words of ten or more letters", r"\b[a-zA-Z]{10,}\b"),
    ("short_words", "very short words of one or two letters", r"\b[a-zA-Z]{1,2}\b"),
    ("double_letters", "words with a doubled letter such as ll, ss or ee", r"\b\w*([a-z])\1\w*\b"),
)

SHAPES = (  # (name, explanation, pattern)
    ("digits", "digits and numbers", r"\d+"),
    ("multi_digit", "numbers of two or more digits", r"\b\d{2,}\b"),
    ("years", "four-digit numbers such as years", r"\b\d{4}\b"),
    ("decimals", "decimal numbers with a point, such as 3.14", r"\b\d+\.\d+\b"),
    ("snake_case", "identifiers with underscores, like snake_case names", r"\b\w+_\w+\b"),
    ("dotted_names", "dotted names such as os.path or module.attribute", r"\b[a-zA-Z_]\w*(?:\.[a-zA-Z_]\w*)+\b"),
    ("camel_case", "CamelCase names with an inner capital", r"\b[A-Z][a-z]+[A-Z]\w*\b"),
    ("dunder", "double-underscore names such as __init__", r"\b__\w+__\b"),
    ("mixed_alnum", "words mixing letters and digits such as utf8 or x2", r"\b(?=\w*\d)(?=\w*[A-Za-z])\w+\b"),
    ("operators", "comparison operators such as ==, != and <=", r"==|!=|<=|>=|<<|>>"),
)

FREQUENT_WORDS = (
    "object",
    "value",
    "function",
    "method",
    "class",
    "type",
    "list",
    "name",
    "module",
    "string",
    "attribute",
    "argument",
    "expression",
    "statement",
    "sequence",
    "instance",
    "exception",
    "number",
    "dictionary",
    "code",
    "file",
    "operator",
    "default",
    "keyword",
    "variable",
    "element",
    "result",
    "loop",
    "index",
    "integer",
    "block",
    "case",
    "syntax",
    "form",
    "call",
    "order",
    "body",
    "target",
    "context",
    "scope",
    "item",
    "key",
    "iterator",
    "generator",
    "level",
    "error",
    "condition",
    "mode",
    "character",
    "byte",
    "slice",
    "format",
    "parameter",
    "definition",
    "assignment",
    "reference",
    "section",
    "import",
    "package",
    "interpreter",
    "data",
    "program",
    "specified",
    "following",
    "example",
    "used",
    "must",
    "also",
    "only",
    "other",
    "such",
    "new",
    "same",
    "first",
    "may",
    "any",
    "given",
    "defined",
    "called",
    "returns",
    "always",
    "where",
    "there",
    "which",
)


def _word_rule(word: str) -> PlantedRule:
    phr = (
        f'the word "{word}"',
        f'"{word}"',
        f"the word {word}, in any case",
        f'occurrences of "{word}"',
        f'the token "{word}"',
    )
    return PlantedRule(
        f"word:{word}", phr[0], rf"\b{re.escape(word)}\b", flags=re.IGNORECASE, family="word", phrasings=phr[1:]
    )


def _class_rule(name: str, explanation: str, words: tuple[str, ...]) -> PlantedRule:
    listed = ", ".join(f'"{w}"' for w in words[:4])
    phr = (explanation, f"{explanation} ({listed} ...)", f"the words {listed} and similar", f"any of: {listed}")
    pattern = r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
    return PlantedRule(f"class:{name}", phr[0], pattern, family="class", phrasings=phr[1:])


def _punct_rule(char: str, plural: str) -> PlantedRule:
    phr = (plural, f'the character "{char}"', f'every "{char}"', f"the {char} symbol")
    return PlantedRule(f"punct:{char}", phr[0], re.escape(char), family="punctuation", phrasings=phr[1:])


def _position_rules() -> list[PlantedRule]:
    out = [
        PlantedRule(
            f"after:{w}",
            f'the word right after "{w}"',
            rf"\b{re.escape(w)}\s+([A-Za-z]+)",
            group=1,
            flags=re.IGNORECASE,
            family="position",
            phrasings=(f'the word that follows "{w}"', f"the next word after the word {w}"),
        )
        for w in POSITION_WORDS
    ]
    out += [PlantedRule(f"position:{n}", e, p, group=1, family="position") for n, e, p in POSITIONS]
    return out


# more frequent words of the builtin corpus, for a suite large enough to hold out 130+ rules (`suite(larger=True)`)
MORE_WORDS = (
    "attributes",
    "arguments",
    "methods",
    "objects",
    "values",
    "names",
    "types",
    "classes",
    "functions",
    "modules",
    "statements",
    "expressions",
    "sequences",
    "instances",
    "strings",
    "keys",
    "items",
    "blocks",
    "operation",
    "operations",
    "evaluation",
    "evaluated",
    "execution",
    "executed",
    "object's",
    "optional",
    "positional",
    "mapping",
    "container",
    "identifier",
    "literal",
    "namespace",
    "semantics",
    "comparison",
    "implementation",
    "behaviour",
    "supported",
    "section",
    "description",
    "details",
)


def suite(larger: bool = False) -> list[PlantedRule]:
    """Every rule of every family (module doc), names unique; `larger` adds the MORE_WORDS word rules
    (after every other rule, so the deal of the default suite is unchanged within other families)."""
    words = FREQUENT_WORDS + tuple(w for w in MORE_WORDS if w not in FREQUENT_WORDS) if larger else FREQUENT_WORDS
    rules = [_word_rule(w) for w in words]
    rules += [_class_rule(n, e, ws) for n, (e, ws) in WORD_CLASSES.items()]
    rules += [_punct_rule(c, p) for c, p in PUNCTUATION.items()]
    rules += [PlantedRule(f"span:{n}", e, p, group=1, family="span") for n, e, p in SPANS]
    rules += _position_rules()
    rules += [PlantedRule(f"morph:{n}", e, p, family="morphology") for n, e, p in MORPHOLOGY]
    rules += [PlantedRule(f"shape:{n}", e, p, family="shape") for n, e, p in SHAPES]
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError("planted suite: rule names must be unique")
    return rules


PARTS = ("simulator", "explainer", "heldout")


def _position(name: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16) / 16**12


def split_suite(
    rules: Iterable[PlantedRule],
    fractions: tuple[float, float] = (0.55, 0.3),
    seed: int = 0,
    unseen_families: Iterable[str] = (),
    unseen_explainer: float = 0.25,
) -> dict[str, list[PlantedRule]]:
    """Deal rules into simulator / explainer / heldout within each family (module doc): a family's rules
    sorted by their seeded hash position, the first share to the simulator, the next to the explainer.
    A family in `unseen_families` gives the simulator none (a judge is then tested on a kind of rule it
    never saw): `unseen_explainer` of it to the explainer, the rest held out."""
    by_family: dict[str, list[PlantedRule]] = {}
    for r in rules:
        by_family.setdefault(r.family, []).append(r)
    unseen = set(unseen_families)
    unknown = unseen - set(by_family)
    if unknown:
        raise ValueError(f"unseen families {sorted(unknown)}: the suite's families are {sorted(by_family)}")
    out: dict[str, list[PlantedRule]] = {p: [] for p in PARTS}
    for family in sorted(by_family):
        ranked = sorted(by_family[family], key=lambda r: _position(r.name, seed))
        n = len(ranked)
        if family in unseen:
            b = round(unseen_explainer * n)
            out["explainer"] += ranked[:b]
            out["heldout"] += ranked[b:]
            continue
        a = max(1, round(fractions[0] * n)) if n >= 3 else n
        b = max(a + 1, round((fractions[0] + fractions[1]) * n)) if n >= 3 else n
        out["simulator"] += ranked[:a]
        out["explainer"] += ranked[a:b]
        out["heldout"] += ranked[b:]
    return out
