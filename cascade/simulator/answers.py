"""What a simulated tier answers: text, JSON or a tool call, right or wrong as the data says.

A correct answer is the stored response of a model the data marks right when there is one (the
GSM8K rows), else a short answer in the prompt's form: the option of a multiple-choice prompt,
a number for arithmetic, a function for a coding task, a sentence otherwise. A wrong answer has
the same form and length, with another option, another number or a buggy body -- plausible, so
only its lower token logprobs (or a stronger tier) give it away. The simulator has no ground
truth beyond the data, so for prompts without a stored answer the "right" option or number is
drawn from the prompt's hash: every profile that is right agrees on it.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cascade.simulator.labels import Label, LabelTable, draw, normalize
from cascade.simulator.profiles import Profile
from cascade.simulator.structured import break_json, dumps, schema_instance

__all__ = ["Ask", "Reply", "compose", "split_tokens"]

_TOKEN = re.compile(r"\s*[^\W\d_]{1,8}|\s*\d{1,3}|\s*\S|\s+")
_OPTION = re.compile(r"^\s*\(?([A-J])[.)]\s+(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_DEF = re.compile(r"def\s+([A-Za-z_]\w*)\s*\(")
_CODE_TASKS = {"mbpp", "human_eval"}
_MATH_TASKS = {"gsm8k", "math", "agentverse-mgsm"}
_FILLER = (
    " The question gives everything needed to settle this.",
    " Checking each condition in turn leads to the same place.",
    " This follows directly from the facts stated above.",
    " The other possibilities contradict at least one of the given details.",
    " Working through it step by step confirms the result.",
    " A quick sanity check on the numbers agrees.",
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


def compose(ask: Ask, profile: Profile, labels: LabelTable) -> Reply:
    """The answer ``profile`` gives to ``ask``; the same for the same prompt every time."""
    label = labels.lookup(ask.prompt)
    correct = labels.is_correct(profile.quality, ask.prompt, label)
    rng = _rng(ask.prompt, profile.name)
    if ask.tool is not None:
        args = dumps(schema_instance(ask.tool.get("parameters"), ask.prompt, rng))
        if draw(ask.prompt, "tool") < profile.quality.malformed_tool_call_rate:
            args = break_json(args, rng)
        text, tool_name = args, str(ask.tool.get("name", ""))
    else:
        text, tool_name = _text(ask.prompt, label, profile, correct), None
        if ask.json_mode or ask.json_schema is not None:
            text = _json_text(ask, text, rng)
            if draw(ask.prompt, "json") < profile.quality.invalid_json_rate:
                text = break_json(text, rng)
    tokens = tuple(split_tokens(text))
    return Reply(
        tokens, _logprobs(len(tokens), correct, rng), correct, label is not None, tool_name
    )


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


def _text(prompt: str, label: Label | None, profile: Profile, correct: bool) -> str:
    if label is not None and label.weak_response and label.strong_response:
        return _stored(label, profile.quality.score, correct)
    task = label.task if label else ""
    truth = _rng(prompt, "truth")
    lie = _rng(prompt, f"wrong-{profile.name}")
    length = _rng(prompt, f"length-{profile.name}")
    options = dict(_OPTION.findall(prompt))
    if len(options) >= 2:
        letters = sorted(options)
        right = truth.choice(letters)
        pick = right if correct else lie.choice([x for x in letters if x != right])
        return _pad(f"The answer is {pick}. {options[pick].rstrip('.')}.", length, 1, 3)
    if task in _CODE_TASKS or "def " in prompt or re.search(r"\bfunction\b", prompt):
        return _code(prompt, correct, length)
    if task in _MATH_TASKS or (sum(c.isdigit() for c in prompt) >= 2 and "?" in prompt):
        value = truth.randint(2, 500)
        if not correct:
            value += lie.choice([-1, 1]) * lie.randint(1, max(2, value // 3))
        return _pad("Let's work through the quantities in the problem.", length, 2, 6) + (
            f"\nThe answer is {value}."
        )
    subject = " ".join(prompt.split()[:6]).rstrip("?.:")
    if correct:
        lead = f"Regarding {subject!r}: the well-established answer is the one stated here."
    else:
        lead = f"Regarding {subject!r}: it is most likely the other, commonly confused option."
    return _pad(lead, length, 1, 4)


def _stored(label: Label, column: str, correct: bool) -> str:
    own, other = (
        (label.weak_response, label.weak_score)
        if column == "weak_score"
        else (label.strong_response, label.strong_score)
    )
    text = (own or "").strip()
    if correct or other < 1.0:
        return text  # a right answer, or a wrong one the data recorded
    # The profile fails a prompt its column got right: the same working, a wrong final number.
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return text + "\nOn reflection, the answer is 0."
    last = numbers[-1]
    wrong = str(int(float(last.group().replace(",", ""))) + 1)
    return text[: last.start()] + wrong + text[last.end() :]


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


def _logprobs(count: int, correct: bool, rng: random.Random) -> tuple[float, ...]:
    # Right answers are confident (mean about -0.25); wrong ones mostly fall below the default
    # low-logprob threshold of -1.5, but not all, so a mean-logprob check is useful, not perfect.
    mean = max(rng.gauss(-0.25, 0.1), -0.6) if correct else min(rng.gauss(-1.7, 0.4), -0.7)
    return tuple(round(max(-rng.expovariate(-1.0 / mean), -20.0), 4) for _ in range(count))
