"""Evidence about code answers: does the candidate's code parse, and does it behave like the
witnesses' code on the same inputs (differential testing)?

Agreement of text sees nothing in code: two correct functions rarely share their words, and a
wrong one can look like a right one. What can be compared is behaviour. :func:`check_code`
takes the Python code of a candidate answer and of its witnesses (:func:`python_code`), picks
the function to test and a fixed set of inputs from the prompt and the candidate
(:mod:`cascade.model.code_evidence_inputs`), runs every answer's code on those inputs in its own
sandboxed interpreter (:mod:`cascade.model.code_evidence_sandbox`), and returns each answer's
:class:`Behaviour`: one output per input, an exception or a timeout being an output like any
other. Two behaviours agree on the share of inputs where their outputs are equal; their
:attr:`Behaviour.signature` is equal when they agree on all of them, and is what
:mod:`cascade.model.answer_features` uses as the final answer of a code answer.

Running code costs tens of milliseconds (about 65 ms for a candidate and two witnesses on two
cores, about a second when one of them loops: ``benchmarks/bench_code_evidence``) and never more
than :attr:`~cascade.model.code_evidence_sandbox.Limits.wall_seconds`. It never
happens for an answer :func:`looks_like_code` says is not code, and an async caller runs a
code check off the event loop: ``await check_code_async(...)``, or
``await asyncio.to_thread(verifier.confidence, ...)`` when ``looks_like_code(candidate)``.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cascade.model.code_evidence_inputs import calls_for, match_function, target_of
from cascade.model.code_evidence_sandbox import (
    DEFAULT_LIMITS,
    Limits,
    Program,
    Value,
    run_programs,
)

__all__ = [
    "Behaviour",
    "Code",
    "CodeCheck",
    "check_code",
    "check_code_async",
    "looks_like_code",
    "python_code",
]

MAX_CODE = 50_000
"""Characters of code looked at; longer code is not parsed (nor run)."""
_PYTHON_TAGS = frozenset(("python", "py", "python3", "py3"))
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = ("def ", "class ", "import ", "from ", "@")


@dataclass(frozen=True)
class Code:
    """The Python code of an answer: its fenced Python blocks (or the whole answer), joined."""

    source: str
    parses: bool
    """``ast.parse`` accepts it (blocks that do not parse are left out when others do)."""


@dataclass(frozen=True)
class Behaviour:
    """One answer's outputs on the check's inputs, in order, and how its run ended.

    An output is ``=<value>``, ``print:<text>`` or a failure class: ``!error`` (raised),
    ``!timeout``, ``!memory``, ``!refused`` (tried something the sandbox forbids),
    ``!missing`` (no such function), ``!crashed``.
    """

    outputs: tuple[str, ...]
    failure: str | None = None
    refused: tuple[str, ...] = ()

    @property
    def answered(self) -> bool:
        """Returned or printed something on some input: a program that fails on every input
        states no answer (two such programs do not agree)."""
        return any(not out.startswith("!") for out in self.outputs)

    @property
    def signature(self) -> str:
        """Equal for two behaviours with equal outputs on every input."""
        return hashlib.sha256("\x1f".join(self.outputs).encode()).hexdigest()[:16]

    def agreement(self, other: Behaviour | None) -> float:
        """Share of inputs where the outputs are equal (0 against no behaviour)."""
        if other is None or len(other.outputs) != len(self.outputs) or not self.outputs:
            return 0.0
        same = sum(a == b for a, b in zip(self.outputs, other.outputs, strict=True))
        return same / len(self.outputs)


@dataclass(frozen=True)
class CodeCheck:
    """A differential test: the function called (None: run as scripts), the inputs, and each
    answer's behaviour (None for a witness with no Python code that parses)."""

    function: str | None
    calls: tuple[tuple[Value, ...], ...]
    candidate: Behaviour
    witnesses: tuple[Behaviour | None, ...]

    @property
    def agreement(self) -> tuple[float, ...]:
        """For each witness, the share of inputs where it and the candidate agree."""
        return tuple(self.candidate.agreement(w) for w in self.witnesses)


def looks_like_code(text: str) -> bool:
    """Whether ``text`` may hold Python code to check: a Python or untagged code fence, or a
    reply that starts like code. Cheap (substring tests); :func:`python_code` decides."""
    if "```" in text:
        return any(m[1].lower() in _PYTHON_TAGS or not m[1] for m in _fences(text))
    return text.lstrip().startswith(_CODE_START)


def python_code(text: str) -> Code | None:
    """The Python code in ``text``, or None when it holds none.

    Fenced blocks tagged ``python`` (or ``py``) count, and untagged ones that parse and hold a
    statement (not just a value); an answer with fences but no Python block (JavaScript, JSON)
    has none. Without fences, the whole reply when it starts like code.
    """
    if "```" in text:
        blocks = [
            m[2]
            for m in _fences(text)
            if m[1].lower() in _PYTHON_TAGS or (not m[1] and _is_statements(m[2]))
        ]
        if not blocks:
            return None
        parsing = [b for b in blocks if _parse(b) is not None]
        return Code("\n\n".join(parsing or blocks), parses=bool(parsing))
    if text.lstrip().startswith(_CODE_START):
        return Code(text, parses=_parse(text) is not None)
    return None


def check_code(
    prompt: str,
    candidate: Code,
    witnesses: Sequence[Code | None],
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> CodeCheck | None:
    """Run the candidate's and each witness's code on the same inputs; None when the
    candidate's code does not parse. Blocks (subprocesses): see :func:`check_code_async`."""
    tree = _parse(candidate.source) if candidate.parses else None
    if tree is None:
        return None
    target = target_of(prompt, tree)
    name = None if target is None else target.name
    calls = ((),) if target is None else calls_for(prompt, target, tree)
    programs = [Program(candidate.source, name, calls)]
    runs: list[int | None] = []  # index into programs, per witness
    for witness in witnesses:
        witness_tree = _parse(witness.source) if witness is not None and witness.parses else None
        if witness is None or witness_tree is None:
            runs.append(None)
            continue
        function = match_function(witness_tree, target) if target is not None else None
        if target is not None and function is None:
            runs.append(-1)  # it lacks the function: every output is "!missing"
            continue
        runs.append(len(programs))
        programs.append(Program(witness.source, function, calls))
    results = [Behaviour(r.outputs, r.failure, r.refused) for r in run_programs(programs, limits)]
    missing = Behaviour(("!missing",) * len(calls))
    return CodeCheck(
        name,
        calls,
        results[0],
        tuple(None if i is None else missing if i < 0 else results[i] for i in runs),
    )


async def check_code_async(
    prompt: str,
    candidate: Code,
    witnesses: Sequence[Code | None],
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> CodeCheck | None:
    """:func:`check_code` in a worker thread, so the event loop keeps serving meanwhile."""
    return await asyncio.to_thread(check_code, prompt, candidate, witnesses, limits=limits)


def _fences(text: str) -> list[re.Match[str]]:
    return list(_FENCE.finditer(text[: MAX_CODE * 2]))


def _parse(source: str) -> ast.Module | None:
    if len(source) > MAX_CODE:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes warn while parsing
            return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _is_statements(block: str) -> bool:
    """Parses, and is more than a value: an untagged block of output (``120``) is no code."""
    tree = _parse(block)
    return tree is not None and any(not isinstance(node, ast.Expr) for node in tree.body)
