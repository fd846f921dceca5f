"""Volatile content: the parts of a system prompt that change on every request.

Timestamps, dates, clock times, UUIDs, request/trace ids and per-user greetings break a provider's
prefix cache when they sit in the system prompt. Detection is conservative: a line that mentions
dates or carries a version number stays put, and so do lines inside fenced code blocks and
schedule-like times ("open 09:00-17:00", "at 9:00"). The regular expressions are compiled at
import; searching a line costs tenths of a microsecond per character, so each line's verdict is
remembered (a bounded LRU memo of a pure function): system prompts repeat line for line, and only
the volatile lines themselves are new on every request.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator

__all__ = ["line_kind", "split_volatile_sentences", "volatile_lines"]

_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH_NUM = r"(?:0?[1-9]|1[0-2])"
_MONTH = (
    r"\b(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_WEEKDAY = (
    r"\b(?i:mon(?:day)?|tue(?:s(?:day)?)?|wed(?:nesday)?|thu(?:r(?:s(?:day)?)?)?|fri(?:day)?"
    r"|sat(?:urday)?|sun(?:day)?)\.?"
)
_YEAR = r"(?:19|20)\d{2}"
# Numbers glued to words, paths or versions ("gpt-4o-2024-08-06", "/v1/2024-01-01") are not dates.
_NUM_START = r"(?<![\w.:/-])"
_NUM_END = r"(?![\w:/-]|\.\d)"
_AMPM = r"(?:\s?(?i:[ap]\.?m\.?)(?!\w))"
# A time after these words, or inside a range, is a schedule, not the current time.
_SCHEDULE_WORDS = ("at", "from", "until", "till", "before", "after", "between", "by", "to")
_NOT_SCHEDULE = "".join(rf"(?<!{w} )(?<!{w.capitalize()} )" for w in _SCHEDULE_WORDS) + (
    r"(?<!-)(?<!- )(?<!\u2013)(?<!\u2013 )"
)
_NOT_RANGE = r"(?!\s*(?:-|\u2013|to\b|until\b|till\b)\s*\d)"
_NAME = r"[A-Z][\w'\u2019.-]++"
_EMAIL = r"[\w.+-]+@[\w-]+\.[\w.-]+"
_VALUE = rf"\s*[\"'\u201c]?(?:{_EMAIL}|{_NAME}|[\w-]*\d[\w-]*)"  # a name, an email or an id
_ORDINAL = r"(?:st|nd|rd|th)?"

# Patterns are filed by what a match starts with, so that one cheap test per position (a digit?
# a hex digit? a word start? a line start?) rules most of them out at once: the full search costs
# tenths of a microsecond per character even so.
_DIGIT_LED = {
    "timestamp": r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
    r"(?:\s?(?:Z|UTC|GMT|[+-]\d{2}:?\d{2}))?(?![\w:/-])",
    "date": rf"{_YEAR}[-/.]{_MONTH_NUM}[-/.]{_DAY}{_NUM_END}"
    rf"|{_DAY}/{_DAY}/(?:\d{{4}}|\d{{2}}){_NUM_END}|{_DAY}[.-]{_DAY}[.-]{_YEAR}{_NUM_END}"
    rf"|{_DAY}{_ORDINAL}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b",
    "time": rf"(?:[01]?\d|2[0-3]):[0-5]\d:[0-5]\d(?:[.,]\d+)?{_AMPM}?(?![\w:/-])"
    rf"|{_NOT_SCHEDULE}(?:(?:[01]\d|2[0-3]):[0-5]\d{_AMPM}?|(?:1[0-2]|[1-9])(?::[0-5]\d)?{_AMPM})"
    rf"{_NOT_RANGE}(?![\w:/-])",
}
_HEX_LED = {  # after a first hex digit that does not continue a word
    "uuid": r"[0-9a-fA-F]{7}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}(?![\w-])",
    "request_id": r"(?:(?<=\d)|(?=[0-9a-fA-F]*\d))[0-9a-fA-F]{15,}(?![\w-])",
}
_WORD_LED = {  # each behind a look at its first letter, far cheaper than a failed alternation
    "date": rf"(?=[JjFfMmAaSsOoNnDd]){_MONTH}\s+{_DAY}{_ORDINAL},?\s+{_YEAR}\b"
    rf"|(?=[MmTtWwFfSs]){_WEEKDAY},?\s+(?:{_MONTH}\s+{_DAY}|{_DAY}{_ORDINAL}\s+{_MONTH})\b"
    rf"|(?=[TtIi])(?i:today|it)\s+is\s+{_WEEKDAY}(?!\w)",
    "request_id": r"(?=[RrTtSsCcMm])(?:(?i:req|request|trace|span|sess|session|conv|conversation"
    r"|chatcmpl|corr|correlation|txn|msg)[-_](?=[A-Za-z]*\d)[A-Za-z0-9]{6,}\b"
    r"|(?i:request|trace|span|session|correlation|conversation|transaction|message|call)"
    r"[ _-]?(?i:id)\b\s*(?:is\s+)?[:=#]?\s*[\"'`]?(?=[\w.:/+-]*\d)[A-Za-z0-9][\w.:/+-]{3,})",
    "greeting": r"(?=[Yy])(?i:you(?:'re|\u2019re| are)\s+(?:now\s+)?"
    rf"(?:talking|chatting|speaking|conversing)\s+(?:to|with))\s+(?:{_EMAIL}|{_NAME})"
    r"|(?=[TtUuCcVvMmPpSs])(?i:(?:the\s+)?(?:user|customer|client|caller|visitor|member"
    r"|patient|student)(?:'s|\u2019s)?\s+(?:full\s+|first\s+|last\s+|display\s+)?"
    rf"(?:name|username|user\s?name|e-?mail(?:\s+address)?|id|handle)\s*(?:is\b|[:=])){_VALUE}"
    r"|(?=[Tt])(?i:the\s+(?:user|customer|client|caller)\s+is\s+(?:named\s+|called\s+)?)"
    r"[A-Z][a-z][\w'\u2019.-]*"
    r"|(?=[CcLlSsAa])(?i:(?:current|logged[- ]in|signed[- ]in|authenticated|active)"
    rf"\s+(?:user|customer|account|member)(?:\s+(?:name|e-?mail|id))?\s*(?:is\b|[:=])){_VALUE}"
    rf"|(?=[LlSs])(?i:(?:logged|signed)\s+in\s+as)\s+(?:{_EMAIL}|[\w.-]{{2,}})",
}
_LINE_LED = {
    "greeting": r"[ \t>*_#-]*(?i:hello|hi|hey|dear|greetings|welcome(?: back)?"
    r"|good (?:morning|afternoon|evening|day))[ \t]*,?[ \t]+"
    r"(?!(?:I|My|We|Our|You|Your|The|This|It|There|Everyone|All|World|Team|User|Assistant)\b)"
    # "Hi Claude, you are ..." addresses the model, and is the same for every user.
    rf"(?!I['\u2019]){_NAME}(?![,!.]?\s+(?i:you are|you're)\b)",
}


def _named(patterns: dict[str, str], lead: str) -> str:
    """The patterns as named alternatives (``<kind>_<lead>``) so that a match tells its kind."""
    return "|".join(f"(?P<{kind}_{lead}>{pattern})" for kind, pattern in patterns.items())


_VOLATILE = re.compile(
    rf"(?=[0-9]){_NUM_START}(?:{_named(_DIGIT_LED, 'd')})"
    rf"|[0-9a-fA-F](?<![\w-][0-9a-fA-F])(?:{_named(_HEX_LED, 'h')})"
    rf"|\b(?:{_named(_WORD_LED, 'w')})"
    rf"|^(?:{_named(_LINE_LED, 'l')})",
    re.MULTILINE,
)
# A dated line about the model's training is the same on every request.
_STABLE_DATE_LINE = re.compile(r"(?i)cut-?off|training data|trained (?:on|until|up to)")


def volatile_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, kind) for each volatile line of ``text``, outside code fences."""
    fenced = "```" in text or "~~~" in text
    inside = False
    for number, line in enumerate(text.split("\n")):
        if fenced and line.lstrip().startswith(("```", "~~~")):
            inside = not inside
        elif not inside and (kind := line_kind(line)) is not None:
            yield number, kind


def line_kind(line: str) -> str | None:
    """The kind of volatile content on ``line``, or None."""
    return _remembered_line_kind(line) if len(line) <= _REMEMBERED_LINE_CHARS else _find_kind(line)


def _find_kind(line: str) -> str | None:
    """Search ``line`` with the full pattern (costly: tenths of a microsecond per character)."""
    match = _VOLATILE.search(line)
    if match is None:
        return None
    kind = (match.lastgroup or "").rpartition("_")[0]
    if kind in ("date", "timestamp") and _STABLE_DATE_LINE.search(line):
        return None
    return kind


# System prompts repeat line for line across requests, so each line is searched once; only the
# volatile lines themselves (new on every request, and usually short) are searched each time.
_remembered_line_kind = functools.lru_cache(maxsize=4096)(_find_kind)
_REMEMBERED_LINE_CHARS = 2000


# A sentence ends at . ! or ? followed by a space and a capital letter or a quote, except after
# abbreviations that usually precede a name or a number.
_SENTENCE_END = re.compile(
    r"(?<![A-Z])(?<!\bMr)(?<!\bMrs)(?<!\bMs)(?<!\bDr)(?<!\bSt)(?<!\bNo)(?<!\bvs)(?<!\be\.g)"
    r"(?<!\bi\.e)(?<=[.!?])\s+(?=[A-Z\"'(\u201c])"
)


def split_volatile_sentences(line: str) -> tuple[str, list[tuple[str, str]]]:
    """The line's stable sentences (rejoined as written) and its volatile (kind, sentence) pairs."""
    cuts = [0, *(m.end() for m in _SENTENCE_END.finditer(line)), len(line)]
    if len(cuts) == 2:
        return "", []
    stays: list[str] = []
    goes: list[tuple[str, str]] = []
    for start, end in itertools.pairwise(cuts):
        piece = line[start:end]
        kind = line_kind(piece.rstrip())
        if kind is None:
            stays.append(piece)
        else:
            goes.append((kind, piece.rstrip()))
    return "".join(stays).rstrip(), goes
