"""What to call in an answer's code, and on which inputs: a fixed, deterministic set.

The function under test is the one the prompt names (``Write a python function
glork(bork) ...``) when the candidate defines it or the prompt asks for it by name, else the
candidate's only function, else its entry point (a top-level function no other one calls, the
last such). Its inputs come from its required parameters only: each parameter's kind (from an
annotation, else from its name: ``n``, ``count`` → int; ``s``, ``text`` → str; ``nums``,
``items`` → list; otherwise a mix of kinds), a fixed pool of values per kind, and the literals the
prompt itself contains (small integers, decimals, quoted strings, bracketed lists) put first.
Several parameters take the product of shortened pools. At most :data:`MAX_CALLS` calls.

Everything here depends on the prompt and the candidate's code only, never on the witnesses:
each answer's behaviour can be computed once and compared with any subset of the others.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from cascade.model.code_evidence_sandbox import Value

__all__ = ["MAX_CALLS", "Target", "calls_for", "match_function", "prompt_literals", "target_of"]

MAX_CALLS = 24
MAX_PROMPT_INT = 100
"""Larger integers in a prompt are left out: a correct but naive answer (recursive Fibonacci)
would time out on them, and differ from a fast one only in speed."""
_MAX_LITERALS = 6
V = TypeVar("V", bound=Value)
Kind = Literal["int", "float", "str", "list", "bool", "dict", "any"]

POOLS: dict[Kind, tuple[Value, ...]] = {
    "int": (0, 1, 2, 3, 5, 7, 10, 4, 6, 12),
    "float": (0.5, 1.0, 2.5, 3.75, 0.0, 10.0),
    "str": ("abc", "", "a", "hello world", "Hello, World!", "racecar", "aaa", "The quick fox"),
    "list": ([1, 2, 3], [], [1], [3, 1, 2], [5, 5, 1, 0], [10, -2, 7, 3, 3], ["b", "a", "c"]),
    "bool": (True, False),
    "dict": ({}, {"a": 1, "b": 2}),
    "any": (0, 1, 2, 5, "abc", [1, 2, 3], "", 3.5, 10, [], "hello world"),
}
_INT_NAMES = frozenset(
    (
        "n", "m", "k", "i", "j", "a", "b", "c", "x", "y", "z", "p", "q", "r", "num", "number",
        "count", "size", "length", "idx", "index", "limit", "steps", "times", "depth", "level",
        "width", "height", "year", "day", "month", "base", "exp", "power", "start", "end", "stop",
        "step", "total",
    )
)  # fmt: skip
_STR_NAMES = frozenset(
    (
        "s", "t", "text", "string", "str", "word", "sentence", "name", "substr", "sub", "pattern",
        "char", "prefix", "suffix", "line", "msg", "message", "haystack", "needle", "target_string",
        "input_string", "input_str",
    )
)  # fmt: skip
_LIST_NAMES = frozenset(
    (
        "lst", "list", "arr", "array", "nums", "numbers", "items", "values", "xs", "elements",
        "seq", "sequence", "data", "vals", "l", "li", "ints", "strings", "words",
    )
)  # fmt: skip
_ANNOTATIONS: dict[str, Kind] = {
    "int": "int", "float": "float", "str": "str", "bool": "bool", "list": "list",
    "List": "list", "Sequence": "list", "Iterable": "list", "tuple": "list", "Tuple": "list",
    "dict": "dict", "Dict": "dict", "Mapping": "dict",
}  # fmt: skip
_SIGNATURE = re.compile(r"\b([A-Za-z_]\w*)\(([\w\s,]*)\)")
_ASKED = re.compile(r"(?:function|def|method)\s+`?([A-Za-z_]\w*)\s*\(")
_INT = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")
_QUOTED = re.compile(r"""(?<!\w)("[^"\n]{1,40}"|'[^'\n]{1,40}')(?!\w)""")
_BRACKETS = re.compile(r"\[[^\[\]\n]{0,80}\]")


@dataclass(frozen=True)
class Target:
    """The function to call, its parameters' names, and whether the prompt asked for it."""

    name: str
    params: tuple[str, ...]
    named_by_prompt: bool


@dataclass(frozen=True)
class Literals:
    """Values the prompt states, by kind."""

    ints: tuple[int, ...] = ()
    floats: tuple[float, ...] = ()
    strings: tuple[str, ...] = ()
    lists: tuple[list[Value], ...] = ()


def target_of(prompt: str, tree: ast.Module) -> Target | None:
    """The function to test in the candidate's ``tree``, or None: run it as a script."""
    functions = _functions(tree)
    signatures = [(m[1], _names(m[2])) for m in _SIGNATURE.finditer(prompt)]
    for name, params in signatures:
        if params is not None and name in functions:
            return Target(name, _required(functions[name]), named_by_prompt=True)
    if asked := _ASKED.search(prompt):  # asked for by name, and the candidate lacks it
        params = next((p for n, p in signatures if n == asked[1] and p is not None), ())
        return Target(asked[1], params, named_by_prompt=True)
    if not functions:
        return None
    called = {
        node.func.id
        for fn in functions.values()
        for node in ast.walk(fn)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    entries = [name for name in functions if name not in called] or list(functions)
    return Target(entries[-1], _required(functions[entries[-1]]), named_by_prompt=False)


def match_function(tree: ast.Module, target: Target) -> str | None:
    """The function of a witness's ``tree`` to compare with ``target``: the same name; when the
    prompt did not name it, else the witness's only function taking as many arguments."""
    functions = _functions(tree)
    if target.name in functions:
        return target.name
    if target.named_by_prompt or len(functions) != 1:
        return None
    ((name, fn),) = functions.items()
    return name if len(_required(fn)) == len(target.params) else None


def calls_for(prompt: str, target: Target, tree: ast.Module) -> tuple[tuple[Value, ...], ...]:
    """The argument tuples to call ``target`` with (the candidate's ``tree`` gives annotations)."""
    fn = _functions(tree).get(target.name)
    annotations = _annotations(fn) if fn is not None else {}
    kinds = [annotations.get(p) or _kind_of_name(p) for p in target.params]
    if not kinds:
        return ((),)
    literals = prompt_literals(prompt)
    pools = [_pool(kind, literals) for kind in kinds]
    if len(pools) == 1:
        return tuple((v,) for v in pools[0][:MAX_CALLS])
    per = max(2, math.ceil(MAX_CALLS ** (1 / len(pools))))
    product = itertools.product(*(pool[:per] for pool in pools))
    return tuple(itertools.islice(product, MAX_CALLS))


def prompt_literals(prompt: str) -> Literals:
    """Small integers, decimals, quoted strings and bracketed lists the prompt states."""
    ints: list[int] = [int(m) for m in _INT.findall(prompt) if abs(int(m)) <= MAX_PROMPT_INT]
    floats = [float(m) for m in _FLOAT.findall(prompt)]
    strings = [m[1:-1] for m in _QUOTED.findall(prompt)]
    lists = [v for m in _BRACKETS.findall(prompt) if isinstance(v := _literal(m), list)]
    return Literals(
        tuple(_unique(ints)[:_MAX_LITERALS]),
        tuple(_unique(floats)[:_MAX_LITERALS]),
        tuple(_unique(strings)[:_MAX_LITERALS]),
        tuple(lists[:_MAX_LITERALS]),
    )


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Top-level functions by name (a later definition replaces an earlier one)."""
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _required(fn: ast.FunctionDef) -> tuple[str, ...]:
    """Positional parameters without a default."""
    positional = [*fn.args.posonlyargs, *fn.args.args]
    return tuple(a.arg for a in positional[: len(positional) - len(fn.args.defaults)])


def _names(text: str) -> tuple[str, ...] | None:
    """``"a, b"`` as parameter names; None when it is not a list of identifiers."""
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    return tuple(parts) if all(p.isidentifier() for p in parts) else None


def _annotations(fn: ast.FunctionDef) -> dict[str, Kind]:
    found: dict[str, Kind] = {}
    for arg in [*fn.args.posonlyargs, *fn.args.args]:
        node = arg.annotation
        if isinstance(node, ast.Subscript):
            node = node.value
        if isinstance(node, ast.Attribute):  # typing.List
            node = ast.Name(node.attr)
        if isinstance(node, ast.Name) and node.id in _ANNOTATIONS:
            found[arg.arg] = _ANNOTATIONS[node.id]
    return found


def _kind_of_name(name: str) -> Kind:
    low = name.lower()
    if low in _STR_NAMES or any(w in low for w in ("str", "text", "word", "name", "char")):
        return "list" if low in _LIST_NAMES else "str"
    if low in _LIST_NAMES or low.endswith(("list", "arr", "array")):
        return "list"
    if low in _INT_NAMES or low.startswith(("num_", "n_")) or low.endswith(("_count", "_len")):
        return "int"
    if low.endswith("s") and len(low) > 3:
        return "list"
    return "any"


def _pool(kind: Kind, literals: Literals) -> tuple[Value, ...]:
    stated: list[Value] = []
    if kind in ("int", "any") or (kind == "float" and not literals.floats):
        stated += literals.ints[: 2 if kind == "any" else _MAX_LITERALS]
    if kind == "float":
        stated += literals.floats
    if kind in ("str", "any"):
        stated += literals.strings[: 2 if kind == "any" else _MAX_LITERALS]
    if kind in ("list", "any"):
        stated += literals.lists[: 2 if kind == "any" else _MAX_LITERALS]
    return tuple(_unique([*stated, *POOLS[kind]]))


def _unique(values: Sequence[V]) -> list[V]:
    """In order, without repeats (``1`` and ``True`` and ``1.0`` are different inputs)."""
    seen: set[str] = set()
    kept: list[V] = []
    for value in values:
        key = f"{type(value).__name__}:{value!r}"
        if key not in seen:
            seen.add(key)
            kept.append(value)
    return kept


def _literal(text: str) -> Value | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "[\d]" warns while parsing
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(value, list) and all(
        isinstance(v, int | float | str | bool) or v is None for v in value
    ):
        return list(value)
    return None
