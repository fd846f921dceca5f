"""Text normalization shared by training and serving.

The confidence model never sees raw text: :func:`normalize` runs before scikit-learn fits it and
before onnxruntime scores with it, so both see exactly the same string. That is what makes the
exported model agree with the fitted one on messy input: scikit-learn's ``char`` analyzer collapses
whitespace runs itself while the converted ONNX tokenizer does not, and case folding in the ONNX
graph depends on the process locale. Doing both here, in Python, removes the difference.

Changing :func:`normalize` changes what every model was trained on: bump :data:`FEATURE_VERSION`,
which each model's manifest records, and retrain.
"""

from __future__ import annotations

import math
import re
import unicodedata

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "MAX_CHARS",
    "PROMPT_FEATURES_VERSION",
    "normalize",
    "prompt_features",
]

FEATURE_VERSION = "norm-v1:nfkc+ws+lower+4000"
"""Identifies the normalization below; a manifest whose value differs needs a retrained model."""

MAX_CHARS = 4000
"""Normalized text is cut to this many characters: the start of a prompt carries the task."""

# Raw text beyond this is never looked at, so a megabyte prompt costs what a 16 kB one does.
# Normalization rarely shrinks text by more than 4x (only long whitespace runs do).
_RAW_LIMIT = 4 * MAX_CHARS


def normalize(text: str) -> str:
    """Return ``text`` in the form the confidence model is trained and served on.

    NFKC-normalized (full-width letters, ligatures and compatibility forms folded), every run of
    whitespace (spaces, tabs, newlines, Unicode spaces) turned into one space, stripped,
    lower-cased and cut to :data:`MAX_CHARS` characters.
    """
    text = unicodedata.normalize("NFKC", text[:_RAW_LIMIT])
    # str.split() splits on exactly what str.isspace() accepts and drops the ends; it is ~4x
    # faster than re.sub(r"\s+", " ", ...). rstrip: the cut may end on a space.
    return " ".join(text.split()).lower()[:MAX_CHARS].rstrip()


PROMPT_FEATURES_VERSION = "prompt-features-v1"
"""Identifies :func:`prompt_features`; a manifest whose value differs needs a retrained model."""

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "math_symbol_share",
    "log_latex_commands",
    "log_question_marks",
    "ends_with_question",
    "starts_with_wh_word",
    "starts_with_instruction",
    "log_code_markers",
    "log_choice_lines",
    "log_sentences",
    "mean_word_length",
    "long_word_share",
    "distinct_word_share",
    "uppercase_share",
    "log_numbers",
    "commas_per_word",
    "non_ascii_share",
    "punctuation_share",
    "asks_how_many",
    "log_constraint_words",
    "has_dollar",
    "indented_line_share",
)
"""The columns :func:`prompt_features` returns, in order."""

_WORD = re.compile(r"[^\W\d_]+")
_NUMBER = re.compile(r"\d[\d.,]*")
_CHOICE = re.compile(r"(?m)^[ \t]*\(?[a-eA-E][).:][ \t]")
_LATEX = re.compile(r"\\[a-zA-Z]+|\$[^$\n]+\$")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_WH_WORDS = frozenset(("what", "who", "when", "where", "which", "why", "how", "whom", "whose"))
_INSTRUCTIONS = frozenset(
    (
        "write", "compute", "calculate", "solve", "find", "explain", "describe", "prove",
        "implement", "create", "generate", "list", "give", "summarize", "translate", "determine",
        "evaluate", "simplify",
    )
)  # fmt: skip
_CODE_WORDS = frozenset(("def", "return", "import", "class", "function", "int", "str", "print"))
_CODE_SYMBOLS = ("```", "=>", "{", "}", ";\n")
_CONSTRAINT_WORDS = frozenset(
    (
        "must", "should", "exactly", "least", "most", "only", "except", "not", "each", "every",
        "all", "both", "neither", "unless", "if",
    )
)  # fmt: skip


def _byte_class(chars: str) -> bytes:
    """The bytes a ``bytes.translate(None, delete=...)`` call deletes to keep only ``chars``."""
    keep = set(chars.encode("ascii"))
    return bytes(b for b in range(256) if b not in keep)


_NOT_DIGIT = _byte_class("0123456789")
_NOT_MATH = _byte_class("+-*/=^<>%")
_NOT_UPPER = _byte_class("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NOT_PUNCT = _byte_class("!\"#&'()*,-./:;?@[\\]_{}")
_NOT_HIGH = bytes(range(128))  # deleting every ASCII byte leaves the UTF-8 bytes of the rest
# Lower-case ASCII letters stay, every other byte becomes a space (for ASCII text only).
_SPACE_BUT_LETTERS = bytes(b if 0x61 <= b <= 0x7A else 0x20 for b in range(256))


def prompt_features(text: str) -> list[float]:
    """Domain-agnostic numbers describing a prompt's form, in the order of :data:`FEATURE_NAMES`.

    Length, digit and math-symbol density, question form, code, multiple-choice and LaTeX
    markers, sentence and constraint counts, word length and variety: properties that say how
    hard a prompt is without knowing its topic, so a model on them transfers across tasks better
    than one on words. Reads the NFKC form of the first :data:`MAX_CHARS` characters (case and
    line breaks kept); shares are per UTF-8 byte of that text (ASCII classes only).
    """
    text = text[:_RAW_LIMIT]
    ascii_only = text.isascii()
    if not ascii_only:  # NFKC leaves ASCII as it is
        text = unicodedata.normalize("NFKC", text)
    text = text[:MAX_CHARS]
    raw = text.encode("utf-8")
    size = max(len(raw), 1)
    low = text.lower()
    high = raw.translate(None, _NOT_HIGH)  # the UTF-8 bytes of the non-ASCII characters
    if ascii_only or not any(map(str.isalnum, high.decode("utf-8"))):
        # No letter or number outside ASCII (at most curly quotes, dashes, emoji...): the
        # ASCII letter runs are the words _WORD would find, at several times its speed.
        words = raw.lower().translate(_SPACE_BUT_LETTERS).decode("ascii").split()
    else:
        words = _WORD.findall(low)
    n_words = max(len(words), 1)
    first = words[0] if words else ""
    lines = text.split("\n")
    n_filled = sum(map(bool, map(str.strip, lines)))
    # map() with a C-level predicate instead of generator expressions: this runs per request.
    code_words = sum(map(_CODE_WORDS.__contains__, words))
    return [
        math.log1p(len(text)),
        math.log1p(len(words)),
        math.log1p(n_filled),
        len(raw.translate(None, _NOT_DIGIT)) / size,
        len(raw.translate(None, _NOT_MATH)) / size,
        math.log1p(len(_LATEX.findall(text))),
        math.log1p(text.count("?")),
        float(text.rstrip().endswith("?")),
        float(first in _WH_WORDS),
        float(first in _INSTRUCTIONS),
        math.log1p(code_words + sum(map(text.count, _CODE_SYMBOLS))),
        math.log1p(len(_CHOICE.findall(text))),
        math.log1p(len(_SENTENCE_END.findall(text))),
        sum(map(len, words)) / n_words,
        sum(map(_LONG_WORD.__le__, map(len, words))) / n_words,
        len(set(words)) / n_words,
        len(raw.translate(None, _NOT_UPPER)) / size,
        math.log1p(len(_NUMBER.findall(text))),
        text.count(",") / n_words,
        len(high) / size,
        len(raw.translate(None, _NOT_PUNCT)) / size,
        float("how many" in low or "how much" in low),
        math.log1p(sum(map(_CONSTRAINT_WORDS.__contains__, words))),
        float("$" in text),
        sum(map(_starts_indented, lines)) / max(n_filled, 1),
    ]


_LONG_WORD = 9
"""Letters from which a word counts as long."""


def _starts_indented(line: str) -> bool:
    return line.startswith((" ", "\t"))
