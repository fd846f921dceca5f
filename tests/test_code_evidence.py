"""Code answers: their code is found and tested on the same inputs as the witnesses' code, and
programs that behave alike agree."""

from __future__ import annotations

import ast
import asyncio

from cascade.model.code_evidence import (
    Code,
    check_code,
    check_code_async,
    looks_like_code,
    python_code,
)
from cascade.model.code_evidence_inputs import MAX_CALLS, calls_for, target_of

PROMPT = "Write a python function fib(n) that returns the n-th Fibonacci number (0 based)."
ITERATIVE = (
    "Here is an iterative version:\n```python\ndef fib(n):\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\nIt runs in O(n)."
)
RECURSIVE = "```py\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```"
OFF_BY_ONE = (
    "```python\ndef fib(n):\n    a, b = 1, 1\n    for _ in range(n):\n"
    "        a, b = b, a + b\n    return a\n```"
)
RENAMED = (
    "```python\ndef fibonacci(n):\n"
    "    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n```"
)
BROKEN = "```python\ndef fib(n)\n    return n\n```"
JAVASCRIPT = "```javascript\nfunction fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }\n```"


def _code(text: str) -> Code:
    code = python_code(text)
    assert code is not None
    return code


def test_python_code_is_found_in_fences_or_as_the_whole_reply() -> None:
    """Python and untagged fences count, other languages and prose do not; broken code is
    code that does not parse."""
    assert _code(ITERATIVE).parses
    assert "for _ in range(n)" in _code(ITERATIVE).source
    assert _code("def f(x):\n    return x\n").parses
    assert _code("```\nimport math\nprint(math.pi)\n```").parses
    assert python_code("```\n120\n```") is None  # an untagged block of output
    assert python_code(JAVASCRIPT) is None
    assert python_code("The answer is 42.") is None
    assert not _code(BROKEN).parses


def test_looks_like_code_is_a_cheap_superset() -> None:
    """Whatever python_code finds code in, looks_like_code says may be code."""
    for text in (ITERATIVE, RECURSIVE, BROKEN, "def f(x):\n    return x\n"):
        assert looks_like_code(text)
    for text in ("Paris", '```json\n{"answer": "18"}\n```', JAVASCRIPT, "I def-initely agree."):
        assert not looks_like_code(text)


def test_inputs_come_from_the_prompt_and_the_signature() -> None:
    """The prompt's named function is tested; the prompt's literals come first; parameter
    names set the kinds; the set is the same every time and bounded."""
    prompt = "Write a python function substrcount(str, substr) counting 'ab' in 'abcab'."
    tree = ast.parse("def substrcount(str, substr):\n    return str.count(substr)\n")
    target = target_of(prompt, tree)
    assert target is not None
    assert target.name == "substrcount"
    assert target.named_by_prompt
    calls = calls_for(prompt, target, tree)
    assert calls == calls_for(prompt, target, tree)
    assert 1 < len(calls) <= MAX_CALLS
    assert calls[0] == ("ab", "ab")
    assert all(isinstance(a, str) and isinstance(b, str) for a, b in calls)


def test_equivalent_programs_agree_and_a_wrong_one_does_not() -> None:
    """Iterative and recursive Fibonacci behave alike; an off-by-one version differs on most
    inputs; a witness that renamed the asked-for function, or has no code, agrees on none."""
    check = check_code(
        PROMPT,
        _code(ITERATIVE),
        [_code(RECURSIVE), _code(OFF_BY_ONE), _code(RENAMED), python_code(JAVASCRIPT)],
    )
    assert check is not None
    assert check.function == "fib"
    recursive, _, renamed, javascript = check.witnesses
    assert recursive is not None
    assert recursive.signature == check.candidate.signature
    assert check.agreement[0] == 1.0
    assert 0.0 < check.agreement[1] < 0.5
    assert renamed is not None
    assert set(renamed.outputs) == {"!missing"}
    assert javascript is None
    assert check.agreement[3] == 0.0


def test_a_candidate_that_does_not_parse_is_not_run() -> None:
    """Broken code has no behaviour to compare."""
    assert check_code(PROMPT, _code(BROKEN), [_code(ITERATIVE)]) is None


def test_the_async_entry_point_runs_off_the_event_loop() -> None:
    """check_code_async gives check_code's answer from inside a running event loop."""

    async def check() -> tuple[float, ...]:
        found = await check_code_async(PROMPT, _code(RECURSIVE), [_code(ITERATIVE)])
        assert found is not None
        return found.agreement

    assert asyncio.run(check()) == (1.0,)
