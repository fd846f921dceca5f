"""The final answer of a model's reply: an option letter, a number, yes/no or a short span.

The verifier compares what a candidate answer concludes with what its witnesses conclude, so it
needs the conclusion, not the prose around it. :func:`extract_final_answer` looks for it in the
order the benchmark scorers do (``../shared/data/answers/README.md``), and says whether the reply
stated it in a requested form (``explicit``: a JSON ``"answer"``, ``\\boxed{}``, "the answer is")
or it was guessed from the text (the last option letter, the last number, the whole short reply).

Two answers are the same when their :attr:`FinalAnswer.key` is: numbers compare by value
(``"1,000"``, ``"$1000.00"`` and ``"1000"`` agree; ``"3/4"`` is ``0.75``), Python and JSON
literals by value, other text after case and whitespace folding.
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["FinalAnswer", "Kind", "extract_final_answer", "has_choices"]

Kind = Literal["letter", "number", "yesno", "text", "code"]
"""``code``: a program's behaviour signature (:mod:`cascade.model.code_evidence`), never
extracted from text here."""

MAX_SCAN = 20_000
"""Characters of a reply looked at: a final answer is stated once, and runaway replies are long."""
_TAIL = 600
MAX_SPAN = 100
"""A reply (or an ``"answer"`` value) longer than this, once folded, is not a short answer."""
_MAX_LITERAL = 400

# Option lines of a multiple-choice prompt: "A) …", "(B) …", "C. …", "D: …" at a line start.
_CHOICE_LINE = re.compile(r"(?m)^[ \t]*\(?([A-J])[).:][ \t]")
_FIRST_OPTION = re.compile(r"(?m)^[ \t]*\(?A\)[ \t]")
_JSON_ANSWER = re.compile(r'"answer"\s*:\s*')
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LETTER_STATED = re.compile(r"(?i:answer\s+is)\s*:?\s*\**\s*\(?\**([A-J])\b")
_LETTER_IN_PARENS = re.compile(r"(?i:answer\s+is)\s*:?\s*\**\s*\(([A-J])\)")
_LETTER_LABEL = re.compile(r"(?i:answer)\s*:\s*\**\s*\(?([A-J])\b")
_LONE_LETTER = re.compile(r"\b([A-J])\b")
_NUMBER_STATED = re.compile(
    r"(?i:answer\s+is)\s*:?\s*\**\s*\\?\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
)
_ANSWER_LINE = re.compile(r"(?im)^\W*(?:final\s+)?answer\s*:\s*(.+)$")
_YES_NO = re.compile(r"(?i)^\W*(yes|no)\b(?! problem)")
_ANY_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?")
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)")
_LATEX_FRACTION = re.compile(r"(-?)\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}")
_NUMBER_WITH_UNIT = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:%|[a-z][a-z .]*)?")
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")
_LATEX_NOISE = ("\\!", "\\,", "\\;", "\\left", "\\right", "\\$", "$", "\\(", "\\)", "\\[", "\\]")


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """What a reply concludes: its ``kind``, canonical ``value``, and how it was found."""

    kind: Kind
    value: str
    explicit: bool
    """Stated in a requested form (JSON ``answer``, ``\\boxed{}``, "the answer is"), not guessed."""

    @property
    def key(self) -> str:
        """Equal for two answers that say the same thing."""
        return f"{self.kind}:{self.value}"


def has_choices(prompt: str) -> bool:
    """Whether ``prompt`` lists lettered options: two lines like ``A) …``, or an ``A)`` line."""
    letters = _CHOICE_LINE.findall(prompt[:MAX_SCAN])
    return len(letters) >= 2 or bool(_FIRST_OPTION.search(prompt[:MAX_SCAN]))


def extract_final_answer(text: str, *, choices: bool = False) -> FinalAnswer | None:
    """The final answer ``text`` states, or None when it states none.

    ``choices``: the prompt lists lettered options (:func:`has_choices`), so a bare letter is an
    option. Tried in order: a JSON ``"answer"`` value, the last ``\\boxed{}``, with ``choices``
    "the answer is (X)" / "Answer: X" / the last standalone letter A to J (MMLU-Pro's order),
    "the answer is N", an "Answer:" line, a leading yes/no, then the fallbacks: the whole reply
    if it is a short number or literal, the last number, the whole reply if it is short.
    """
    text = text[:MAX_SCAN]
    for find in _FINDERS:
        if (found := find(text, choices)) is not None:
            return found
    return None


def _stated(pattern: re.Pattern[str], text: str) -> str | None:
    """The first group of ``pattern`` matched where the text says "answer" (any case), first
    such place first: the regex runs only there, not along the whole reply."""
    low, start = text.lower(), 0
    if len(low) != len(text):  # lower() lengthened a character ("İ"): positions would shift
        found = pattern.search(text)
        return None if found is None else found[1]
    while (start := low.find("answer", start)) >= 0:
        if match := pattern.match(text, start):
            return match[1]
        start += 6
    return None


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    """The last match's first group; the tail is searched first (replies end on the answer)."""
    tail = text[-_TAIL:]
    tail = tail[tail.find(" ") + 1 :]  # from a word's start: "123" cut to "23" is no number
    for part in (tail, text) if len(text) > _TAIL else (text,):
        if found := pattern.findall(part):
            return str(found[-1])
    return None


def _from_json(text: str, choices: bool) -> FinalAnswer | None:
    value = _json_answer(text) if '"answer"' in text else None
    return None if value is None else _canonical(value, choices=choices, explicit=True)


def _from_boxed(text: str, choices: bool) -> FinalAnswer | None:
    value = _boxed(text) if "box" in text else None
    return None if value is None else _canonical(value, choices=choices, explicit=True)


def _from_letters(text: str, choices: bool) -> FinalAnswer | None:
    # without options a letter counts only in parentheses: "the answer is (B)"
    for pattern in (_LETTER_STATED, _LETTER_LABEL) if choices else (_LETTER_IN_PARENS,):
        if (letter := _stated(pattern, text)) is not None:
            return FinalAnswer("letter", letter, explicit=True)
    if not choices:
        return None
    letter = _last(_LONE_LETTER, text)
    return None if letter is None else FinalAnswer("letter", letter, explicit=False)


def _from_stated_number(text: str, choices: bool) -> FinalAnswer | None:
    number = _stated(_NUMBER_STATED, text)
    return None if number is None else _number(number, explicit=True)


def _from_answer_line(text: str, choices: bool) -> FinalAnswer | None:
    match = _ANSWER_LINE.search(text) if "nswer" in text or "NSWER" in text else None
    return None if match is None else _canonical(match[1], choices=choices, explicit=True)


def _from_yes_no(text: str, choices: bool) -> FinalAnswer | None:
    match = _YES_NO.match(text)
    return None if match is None else FinalAnswer("yesno", match[1].lower(), explicit=False)


def _fallback(text: str, choices: bool) -> FinalAnswer | None:
    folded = _fold(text)
    short = bool(folded) and len(folded) <= MAX_SPAN
    found = _canonical(text, choices=choices, explicit=False) if short else None
    if found is not None and (found.kind != "text" or _literal(text.strip())):
        return found  # a short reply that is a number, yes/no or a literal
    if (number := _last(_ANY_NUMBER, text)) is not None:
        return _number(number, explicit=False)
    return found


_FINDERS: tuple[Callable[[str, bool], FinalAnswer | None], ...] = (
    _from_json,
    _from_boxed,
    _from_letters,
    _from_stated_number,
    _from_answer_line,
    _from_yes_no,
    _fallback,
)


def _json_answer(text: str) -> str | None:
    """The value of the last ``"answer": …`` in ``text`` as text (JSON strings decoded)."""
    start = -1
    for match in _JSON_ANSWER.finditer(text):
        start = match.end()
    if start < 0:
        return None
    if text.startswith('"', start):
        try:
            value, _ = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            end = text.find('"', start + 1)
            return text[start + 1 : end] if end > 0 else None
        return value if isinstance(value, str) else None
    if text.startswith(("[", "{"), start):
        try:
            value, _ = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            return None
        return json.dumps(value)
    end = len(text)
    for stop in (",", "}", "\n"):
        if (found := text.find(stop, start)) >= 0:
            end = min(end, found)
    return text[start:end].strip() or None


def _boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{…}`` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, min(len(text), start + 1000)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _canonical(value: str, *, choices: bool, explicit: bool) -> FinalAnswer | None:
    """``value`` (a stated answer) as a letter, number, yes/no or folded text."""
    value = value.strip()
    if choices and (match := re.fullmatch(r"\(?([A-J])\)?(?:[.:)]\s*.*)?", value, re.DOTALL)):
        return FinalAnswer("letter", match[1], explicit)
    if (number := _as_number(value)) is not None:
        return FinalAnswer("number", number, explicit)
    folded = _fold(value)
    if folded in {"yes", "no"}:
        return FinalAnswer("yesno", folded, explicit)
    if literal := _literal(value):
        return FinalAnswer(literal[0], literal[1], explicit)
    if len(folded) > MAX_SPAN or not (folded or explicit):
        return None  # an explicit empty answer ("answer": "") is an answer: the empty string
    return FinalAnswer("text", folded, explicit)


def _as_number(value: str) -> str | None:
    """A canonical number for answers like ``$1,000``, ``3/4``, ``\\frac{3}{4}``, ``18 eggs``."""
    text = _LATEX_TEXT.sub("", value)
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "")
    text = _THOUSANDS.sub("", text).replace("{", "").replace("}", "").strip().rstrip(".").lower()
    if _PLAIN_NUMBER.fullmatch(text):
        return _format_number(text)
    if match := _LATEX_FRACTION.fullmatch(value.replace("$", "").strip()):
        sign = -1.0 if match[1] else 1.0
        return _divide(sign * float(match[2]), float(match[3]))
    if match := _FRACTION.fullmatch(text):
        return _divide(float(match[1]), float(match[2]))
    if (match := _NUMBER_WITH_UNIT.fullmatch(text)) and len(text) <= 40:
        return _format_number(match[1])
    return None


def _divide(numerator: float, denominator: float) -> str | None:
    return None if denominator == 0 else _format_number(repr(numerator / denominator))


def _format_number(text: str) -> str | None:
    try:
        number = float(text)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        return None
    if number == round(number) and abs(number) < 1e15:
        return str(round(number))
    return f"{number:.6g}"


def _number(text: str, *, explicit: bool) -> FinalAnswer | None:
    value = _format_number(_THOUSANDS.sub("", text))
    return None if value is None else FinalAnswer("number", value, explicit)


def _literal(value: str) -> tuple[Kind, str] | None:
    """A Python/JSON literal's canonical form (``'abc'`` and ``abc`` agree), or None."""
    if len(value) > _MAX_LITERAL or not value or value[0] not in "[({'\"-0123456789TFN":
        return None
    try:
        with warnings.catch_warnings():  # "1abc", "'\\d'": Python warns while parsing
            warnings.simplefilter("ignore")
            parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    found: tuple[Kind, str | None]
    if isinstance(parsed, tuple) and not value.startswith("("):
        return None  # "6,8,8" is the text 6,8,8 (CRUXEval scores it so), not a tuple
    if isinstance(parsed, bool) or parsed is None:
        found = "text", str(parsed).lower()
    elif isinstance(parsed, int | float):
        found = "number", _format_number(repr(parsed))
    elif isinstance(parsed, str) and (number := _as_number(parsed)) is not None:
        found = "number", number  # "'816'" and "816" state the same output
    elif isinstance(parsed, str):
        found = "text", _fold(parsed) if len(_fold(parsed)) <= MAX_SPAN else None
    else:
        found = "text", repr(parsed)
    return None if found[1] is None else (found[0], found[1])


def _fold(text: str) -> str:
    """Lower case, one space between words, no trailing period or surrounding quotes."""
    return " ".join(text.split()).lower().strip(" .\"'`*")
