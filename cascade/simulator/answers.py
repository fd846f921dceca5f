"""What a simulated tier answers: text, JSON or a tool call, right or wrong as the data says.

A correct answer is the stored response of a model the data marks right when there is one (the
GSM8K rows), else a short answer in the prompt's form: the option of a multiple-choice prompt,
a number for arithmetic, a function for a coding task, a sentence otherwise. A wrong answer has
the same form and length, with another option, another number or a buggy body. The simulator
has no ground truth beyond the data, so for prompts without a stored answer the "right" option
or number is drawn from the prompt's hash: every profile that is right agrees on it.

Evidence is no stronger than the measured kind (:mod:`cascade.simulator.agreement`,
:mod:`cascade.simulator.logprobs`):

* **Samples** (``n`` > 1): choice 0 is the tier's answer; every other sample is right with the
  probability, given choice 0 right or wrong, that two cheap models' answers have in the data
  at this tier's accuracy (same odds ratio). Draws are salted with the sample's index, so a
  request gets the same ``n`` answers every time.
* **Wrong answers** go to one popular wrong answer per prompt (shared by every tier and sample)
  at the measured ``attractor`` share and otherwise to any wrong option, so two wrong answers --
  two samples, or two cheap tiers -- coincide as often as in the data, not always and not never.
  On a stored GSM8K prompt the popular wrong answer is the one the data recorded.
* **Token logprobs** rank right above wrong answers at AUROC 0.7, ranges overlapping.
* **Wording** of free-text answers does not depend on being right (word overlap between real
  open-ended answers was measured at random).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cascade.simulator.agreement import Agreement, Form, follow, form, measured_for, options
from cascade.simulator.labels import Label, LabelTable, draw, normalize
from cascade.simulator.logprobs import token_logprobs
from cascade.simulator.profiles import Profile
from cascade.simulator.structured import break_json, dumps, schema_instance

__all__ = ["Ask", "Reply", "compose", "compose_samples", "split_tokens"]

_TOKEN = re.compile(r"\s*[^\W\d_]{1,8}|\s*\d{1,3}|\s*\S|\s+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_DEF = re.compile(r"def\s+([A-Za-z_]\w*)\s*\(")
_FILLER = (
    " The question gives everything needed to settle this.",
    " Checking each condition in turn leads to the same place.",
    " This follows directly from the facts stated above.",
    " The other possibilities contradict at least one of the given details.",
    " Working through it step by step confirms the result.",
    " A quick sanity check on the numbers agrees.",
)
_LEADS = (
    "Regarding {subject!r}: the answer is the one stated here.",
    "On {subject!r}: this is what the facts support.",
    "About {subject!r}: here is the short answer.",
)


def split_tokens(text: str) -> list[str]:
    """Cut text into token-sized pieces (words, digit groups, punctuation) that join back to it."""
    return _TOKEN.findall(text)


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request asks of the model, as far as the answer depends on it."""

    prompt: str
    tool: Mapping[str, Any] | None = None
    json_schema: Mapping[str, Any] | None = None
    json_mode: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """The full answer before any ``max_tokens`` or ``stop`` cut, with a logprob per token."""

    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]
    correct: bool
    known: bool
    tool_name: str | None = None

    @property
    def text(self) -> str:
        """The answer (or the tool call's arguments) as one string."""
        return "".join(self.tokens)


@dataclass(frozen=True, slots=True)
class _Draw:
    """One answer to write: the prompt's facts, this answer's correctness and its salt."""

    prompt: str
    label: Label | None
    kind: Form
    agreement: Agreement
    column: str
    correct: bool
    salt: str  # the profile's name, and the sample's index after the first


def compose(ask: Ask, profile: Profile, labels: LabelTable) -> Reply:
    """The answer ``profile`` gives to ``ask``; the same for the same prompt every time."""
    return compose_samples(ask, profile, labels, 1)[0]


def compose_samples(ask: Ask, profile: Profile, labels: LabelTable, n: int) -> tuple[Reply, ...]:
    """``n`` sampled answers: the first is :func:`compose`'s, the others right or wrong as a
    second cheap answer is in the data, given the first (deterministic per prompt and index)."""
    label = labels.lookup(ask.prompt)
    task = label.task if label else ""
    kind = form(ask.prompt, task)
    agreement = measured_for(kind, task)
    first = labels.is_correct(profile.quality, ask.prompt, label, kind)
    accuracy = labels.accuracy(profile.quality, kind)
    given_right, given_wrong = follow(accuracy, accuracy, agreement.odds_ratio)
    column = profile.quality.score
    replies = [
        _reply(ask, profile, _Draw(ask.prompt, label, kind, agreement, column, first, profile.name))
    ]
    for index in range(1, n):
        salt = f"{profile.name}#{index}"
        correct = draw(ask.prompt, f"sample-{salt}") < (given_right if first else given_wrong)
        replies.append(
            _reply(ask, profile, _Draw(ask.prompt, label, kind, agreement, column, correct, salt))
        )
    return tuple(replies)


def _reply(ask: Ask, profile: Profile, answer: _Draw) -> Reply:
    rng = _rng(ask.prompt, answer.salt)
    first = answer.salt == profile.name
    if ask.tool is not None:
        args = dumps(schema_instance(ask.tool.get("parameters"), ask.prompt, rng))
        if draw(ask.prompt, "tool" if first else f"tool-{answer.salt}") < (
            profile.quality.malformed_tool_call_rate
        ):
            args = break_json(args, rng)
        text, tool_name = args, str(ask.tool.get("name", ""))
    else:
        text, tool_name = _text(answer), None
        if ask.json_mode or ask.json_schema is not None:
            text = _json_text(ask, text, rng)
            if draw(ask.prompt, "json" if first else f"json-{answer.salt}") < (
                profile.quality.invalid_json_rate
            ):
                text = break_json(text, rng)
    tokens = tuple(split_tokens(text))
    logprobs = token_logprobs(len(tokens), answer.correct, _rng(ask.prompt, f"lp-{answer.salt}"))
    return Reply(tokens, logprobs, answer.correct, answer.label is not None, tool_name)


def _rng(prompt: str, salt: str) -> random.Random:
    digest = hashlib.sha256(f"{salt}\x00{normalize(prompt)}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _json_text(ask: Ask, answer: str, rng: random.Random) -> str:
    if ask.json_schema is not None:
        value = schema_instance(ask.json_schema, ask.prompt, rng)
        if isinstance(value, dict):
            for key in value:
                if key.lower() in ("answer", "result", "response", "output") and isinstance(
                    value[key], str
                ):
                    value[key] = answer.strip()
        return dumps(value)
    return dumps({"answer": answer.strip()})


def _text(answer: _Draw) -> str:
    label, prompt = answer.label, answer.prompt
    if label is not None and label.weak_response and label.strong_response:
        return _stored(answer, label)
    length = _rng(prompt, f"length-{answer.salt}")
    letters = options(prompt)
    if len(letters) >= 2:
        pick = _letter(answer, sorted(letters))
        return _pad(f"The answer is {pick}. {letters[pick].rstrip('.')}.", length, 1, 3)
    if answer.kind == "code":
        return _code(prompt, answer.correct, length)
    if answer.kind == "number":
        right = _rng(prompt, "truth").randint(2, 500)
        value = right if answer.correct else _wrong_number(answer, right, None)
        return _pad("Let's work through the quantities in the problem.", length, 2, 6) + (
            f"\nThe answer is {value}."
        )
    subject = " ".join(prompt.split()[:6]).rstrip("?.:")
    return _pad(length.choice(_LEADS).format(subject=subject), length, 1, 4)


def _letter(answer: _Draw, letters: list[str]) -> str:
    right = _rng(answer.prompt, "truth").choice(letters)
    if answer.correct:
        return right
    wrong = [x for x in letters if x != right]
    if draw(answer.prompt, f"popular-{answer.salt}") < answer.agreement.attractor:
        return _rng(answer.prompt, "popular").choice(wrong)
    return _rng(answer.prompt, f"wrong-{answer.salt}").choice(wrong)


def _wrong_number(answer: _Draw, right: float, popular: float | None) -> float:
    """A wrong final number: the prompt's popular one at the attractor share, else another."""
    center = round(right)
    if popular is None or popular == right:
        spread = _rng(answer.prompt, "popular")
        popular = center + spread.choice([-1, 1]) * spread.randint(1, max(2, abs(center) // 3))
        popular = popular if popular != right else popular + 1
    if draw(answer.prompt, f"popular-{answer.salt}") < answer.agreement.attractor:
        return popular
    rng = _rng(answer.prompt, f"wrong-{answer.salt}")
    width = max(60, abs(center))
    value = center + rng.choice([-1, 1]) * rng.randint(1, width)
    if value <= 0 < right:
        value = center + rng.randint(1, width)
    while value in (right, popular):
        value += 1
    return value


def _stored(answer: _Draw, label: Label) -> str:
    """A GSM8K answer from the data: a right response, the recorded wrong one, or a right
    response's working with another final number."""
    own = label.weak_response if answer.column == "weak_score" else label.strong_response
    responses = [
        (text.strip(), score)
        for text, score in (
            (own or "", label.score(answer.column)),
            (label.weak_response or "", label.weak_score),
            (label.strong_response or "", label.strong_score),
        )
    ]
    right = next((text for text, score in responses if score >= 1.0), None)
    # one popular wrong answer for every tier: the weak model's recorded one, else the strong's
    recorded = next((text for text, score in responses[1:] if score < 1.0), None)
    base = right or responses[0][0]
    if right is not None and answer.correct:
        return right
    finals = {t: _final(t) for t, _ in responses}
    wrongs = [v for t, v in finals.items() if v is not None and t != right]
    truth = finals.get(right) if right is not None else None
    if truth is None:  # no model in the data was right: a number none of them gave
        truth = max([*wrongs, 0.0]) + 1 + _rng(answer.prompt, "truth").randint(0, 40)
    if answer.correct:
        return _with_final(base, truth)
    popular = finals.get(recorded) if recorded is not None else None
    value = _wrong_number(answer, truth, popular)
    if recorded is not None and value == popular:
        return recorded
    return _with_final(base, value)


def _final(text: str) -> float | None:
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


def _with_final(text: str, value: float) -> str:
    shown = str(int(value)) if value == int(value) else f"{value:g}"
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return f"{text}\nOn reflection, the answer is {shown}."
    last = numbers[-1]
    return text[: last.start()] + shown + text[last.end() :]


def _code(prompt: str, correct: bool, length: random.Random) -> str:
    found = _DEF.search(prompt)
    name = found.group(1) if found else "solve"
    body = "for item in data:" if correct else "for item in data[1:]:"
    code = (
        f"```python\ndef {name}(data):\n    result = []\n    {body}\n"
        "        if item is not None:\n            result.append(item)\n    return result\n```"
    )
    return _pad("Here is a function that does this.", length, 0, 2) + "\n\n" + code


def _pad(lead: str, rng: random.Random, low: int, high: int) -> str:
    extra = rng.randint(low, high)
    return lead + "".join(rng.choice(_FILLER) for _ in range(extra))
