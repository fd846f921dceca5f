"""Features of a candidate answer given its witnesses, shared by verifier training and serving.

A *candidate* is the cheap tier's answer the router may accept; *witnesses* are other answers to
the same prompt (more samples of the tier, or a second cheap tier). What says a candidate is right
and transfers across tasks is evidence from the answers: do the witnesses reach the same final
answer (:mod:`cascade.model.final_answer`)? When no final answer can be extracted, how similar are
the texts? Besides: the candidate's form (stated in the requested format? hedging? a refusal? a
runaway repetition?) and, when the tier returns them, its token logprobs.

Code is its own case (:mod:`cascade.model.code_evidence`): when an answer is Python code (and
states no final answer in a requested form), its final answer is its *behaviour*: the outputs
of its function on a fixed set of inputs, run in a sandbox beside the witnesses' code on the same
inputs. The agreement columns then say whether the programs behave alike; ``code_parses`` and
``behaviour_agreement`` (the share of inputs with equal outputs) add what a key cannot. Only a
candidate that is code runs anything: :func:`answer_features` then blocks for tens of
milliseconds (up to seconds for code that loops), so an async caller computes it off the event
loop when :func:`~cascade.model.code_evidence.looks_like_code` says the candidate is code.
Other answers take the fast path, as before.

:func:`answer_features` returns the numbers in the order of :data:`ANSWER_FEATURE_NAMES`; a
verifier's manifest records :data:`ANSWER_FEATURES_VERSION`. Changing a feature means bumping it
and retraining. Training parses each answer once (:func:`parse_answer`), runs code once per
prompt (:func:`with_behaviours`), and combines parsed answers with :func:`features_of`, the same
functions serving goes through.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cascade.model.code_evidence import Behaviour, Code, check_code, looks_like_code, python_code
from cascade.model.final_answer import FinalAnswer, extract_final_answer, has_choices

__all__ = [
    "ANSWER_FEATURES_VERSION",
    "ANSWER_FEATURE_NAMES",
    "ParsedAnswer",
    "answer_features",
    "features_of",
    "judgeable",
    "parse_answer",
    "with_behaviours",
]

ANSWER_FEATURES_VERSION = "answer-features-v2"
"""Identifies :func:`answer_features`; a verifier whose manifest differs needs retraining."""

ANSWER_FEATURE_NAMES: tuple[str, ...] = (
    "agree_share",
    "all_agree",
    "none_agree",
    "candidate_is_plurality",
    "distinct_share",
    "candidate_extracted",
    "candidate_explicit",
    "witness_extracted_share",
    "witness_explicit_share",
    "letter_answer",
    "similarity_mean",
    "similarity_max",
    "fallback_similarity",
    "log_chars",
    "length_ratio",
    "distinct_word_share",
    "log_hedges",
    "refusal",
    "log_witnesses",
    "logprobs_present",
    "logprob_mean",
    "logprob_min",
    "code_parses",
    "behaviour_agreement",
)
"""The columns :func:`answer_features` returns, in order."""

# Words: what remains between whitespace once ASCII punctuation is turned into spaces.
_SPLIT = str.maketrans(dict.fromkeys(string.punctuation, " "))
# Doubt, self-correction and "none of the options" in the candidate's own words.
_HEDGE_WORDS = frozenset(
    (
        "maybe", "perhaps", "possibly", "probably", "might", "approximately", "roughly", "seems",
        "seem", "unclear", "uncertain", "assume", "assuming", "assumption", "however", "wait",
        "mistake", "incorrect", "reevaluate", "recheck", "recalculate", "unsure",
    )
)  # fmt: skip
_HEDGE_PAIRS = frozenset(
    (
        ("not", "sure"), ("not", "certain"), ("i", "think"), ("i", "believe"), ("may", "be"),
        ("appears", "to"), ("not", "correct"), ("none", "of"), ("not", "among"),
        ("not", "listed"), ("not", "provided"), ("cannot", "determine"), ("cannot", "be"),
        ("not", "possible"), ("let", "me"), ("re", "evaluate"), ("re", "check"),
    )
)  # fmt: skip
# Openings of answers that decline the task (anchored: a helpful answer may quote one later).
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry,? but |i apologi[sz]e,? but |sorry,? )?(?:as an ai[^,.]*, )?(?:i|we)\s*"
    r"(?:can(?:no|')t|cannot|am (?:not able|unable)|'m (?:not able|unable)|won'?t|must decline)"
    r"\s+(?:help|assist|do|provide|comply|answer|fulfil|complete|determine)",
    re.IGNORECASE,
)
_LOGPROB_FLOOR = -20.0
"""Token logprobs are clipped here: one -inf (a forced token) must not dominate the mean."""
_TOKEN_SAMPLE = 4000
"""Characters of each end of an answer whose words are read (bounds the cost of long ones)."""


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """One answer, read once: its final answer, its words and its length; for code, the code
    and (after :func:`with_behaviours`) its behaviour, whose signature is then the final answer."""

    final: FinalAnswer | None
    words: frozenset[str]
    chars: int
    distinct_word_share: float
    hedges: int
    refusal: bool
    code: Code | None = None
    behaviour: Behaviour | None = None


def parse_answer(text: str, *, choices: bool) -> ParsedAnswer:
    """Read ``text`` once for :func:`features_of`; ``choices``: the prompt lists options."""
    if len(text) > 2 * _TOKEN_SAMPLE:
        sample = text[:_TOKEN_SAMPLE] + " " + text[-_TOKEN_SAMPLE:]
    else:
        sample = text
    words = sample.lower().translate(_SPLIT).split()
    hedges = sum(map(_HEDGE_WORDS.__contains__, words))
    hedges += sum(map(_HEDGE_PAIRS.__contains__, itertools.pairwise(words)))
    distinct = frozenset(words)
    final = extract_final_answer(text, choices=choices)
    code = None
    if (final is None or not final.explicit) and looks_like_code(text):
        code = python_code(text)  # code's answer is its behaviour, not its last number
    return ParsedAnswer(
        final=final if code is None else None,
        words=distinct,
        chars=len(text),
        distinct_word_share=len(distinct) / len(words) if words else 1.0,
        hedges=hedges,
        refusal=_REFUSAL.match(text[:300]) is not None,
        code=code,
    )


def with_behaviours(
    prompt: str, candidate: ParsedAnswer, witnesses: Sequence[ParsedAnswer]
) -> tuple[ParsedAnswer, list[ParsedAnswer]]:
    """When the candidate is code that parses, run it and the witnesses' code on the same
    inputs (:func:`~cascade.model.code_evidence.check_code`); each program's behaviour becomes
    its final answer (when it returned or printed something on some input). Otherwise returns
    the answers as they are, at no cost. Each witness's behaviour depends on the prompt and the
    candidate only, so any subset of the witnesses gets the same values."""
    if candidate.code is None or not candidate.code.parses:
        return candidate, list(witnesses)
    check = check_code(prompt, candidate.code, [w.code for w in witnesses])
    if check is None:
        return candidate, list(witnesses)
    return _behaving(candidate, check.candidate), [
        w if b is None else _behaving(w, b) for w, b in zip(witnesses, check.witnesses, strict=True)
    ]


def _behaving(answer: ParsedAnswer, behaviour: Behaviour) -> ParsedAnswer:
    answered = behaviour.answered  # failing on every input states nothing: no final answer
    final = FinalAnswer("code", behaviour.signature, explicit=True) if answered else None
    return replace(answer, final=final, behaviour=behaviour)


def judgeable(prompt: str, candidate: str) -> bool:
    """Whether the verifier has measured evidence for ``candidate``: code that parses (judged by
    behaviour), or a final answer that is stated (JSON ``answer``, ``\\boxed{}``, "the answer
    is"), an option letter or a number — the forms of the benchmarks it was trained and measured
    on. An open-ended reply (free text whose only "final answer" would be the whole reply) is not:
    agreement between such replies was never measured above chance, so the verify step treats
    it as having no evidence rather than trust a confidence the data does not support."""
    parsed = parse_answer(candidate, choices=has_choices(prompt))
    if parsed.code is not None:
        return parsed.code.parses
    final = parsed.final
    return final is not None and (final.explicit or final.kind in ("letter", "number"))


def answer_features(
    prompt: str,
    candidate: str,
    witnesses: Sequence[str],
    logprobs: Sequence[float] | None = None,
) -> list[float]:
    """The verifier's input for ``candidate`` given ``witnesses``, in :data:`ANSWER_FEATURE_NAMES`
    order. ``logprobs``: the candidate's token logprobs, when its tier returned them."""
    choices = has_choices(prompt)
    parsed, others = with_behaviours(
        prompt,
        parse_answer(candidate, choices=choices),
        [parse_answer(w, choices=choices) for w in witnesses],
    )
    return features_of(parsed, others, logprobs)


def features_of(
    candidate: ParsedAnswer,
    witnesses: Sequence[ParsedAnswer],
    logprobs: Sequence[float] | None = None,
) -> list[float]:
    """:func:`answer_features` from answers already parsed (training parses each answer once)."""
    k = len(witnesses)
    key = candidate.final.key if candidate.final is not None else None
    witness_keys = [w.final.key if w.final is not None else None for w in witnesses]
    agree = sum(1 for w in witness_keys if key is not None and w == key)
    # every answer without a final answer counts as one more distinct answer
    counts = Counter(w for w in [key, *witness_keys] if w is not None)
    distinct = len(counts) + sum(1 for w in [key, *witness_keys] if w is None)
    runner_up = max((n for w, n in counts.items() if w != key), default=0)
    similarities = [_jaccard(candidate.words, w.words) for w in witnesses]
    similarity_mean = sum(similarities) / k if k else 0.0
    median_chars = statistics.median(w.chars for w in witnesses) if k else candidate.chars
    mean, low, present = _logprob_summary(logprobs)
    behaviour = candidate.behaviour
    return [
        agree / k if k else 0.0,
        float(k > 0 and agree == k),
        float(k > 0 and agree == 0),
        float(key is not None and counts[key] > runner_up),
        (distinct - 1) / k if k else 0.0,
        float(candidate.final is not None),
        float(candidate.final is not None and candidate.final.explicit),
        sum(1 for w in witness_keys if w is not None) / k if k else 0.0,
        sum(1 for w in witnesses if w.final is not None and w.final.explicit) / k if k else 0.0,
        float(candidate.final is not None and candidate.final.kind == "letter"),
        similarity_mean,
        max(similarities, default=0.0),
        similarity_mean if candidate.final is None else 0.0,
        math.log1p(candidate.chars),
        math.log((1 + candidate.chars) / (1 + median_chars)),
        candidate.distinct_word_share,
        math.log1p(candidate.hedges),
        float(candidate.refusal),
        math.log1p(k),
        present,
        mean,
        low,
        float(candidate.code is not None and candidate.code.parses),
        sum(behaviour.agreement(w.behaviour) for w in witnesses) / k if behaviour and k else 0.0,
    ]


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _logprob_summary(logprobs: Sequence[float] | None) -> tuple[float, float, float]:
    """(mean, min, present) of the finite-or-clipped token logprobs; absent: (0, 0, 0)."""
    if not logprobs:
        return 0.0, 0.0, 0.0
    # NaN and -inf become the floor; a positive value (not a logprob) is read as 0
    values = [
        min(max(v, _LOGPROB_FLOOR), 0.0) if not math.isnan(v) else _LOGPROB_FLOOR
        for v in map(float, logprobs)
    ]
    return sum(values) / len(values), min(values), 1.0
