"""The sandboxed side of :mod:`cascade.model.code_evidence_sandbox`: runs one answer's code.

Executed as a script in a fresh interpreter (``python -S -s -P -B this_file``), never imported
by the router. It reads one JSON job from stdin, then, in this order and before any of the job's
code runs: lowers its resource limits, imports the modules answers may use (so that importing
them later opens no file), installs an audit hook that refuses everything outside a short
allowlist of events, and only then executes the answer's code and calls its function on each
input. Each result is one line on stdout, ``<nonce> <json>``; the parent ignores other lines
(the code may print to the real stdout, but cannot read the nonce's line back to forge one).

Output classes of a call: ``=<canonical value>`` (a returned value; numbers that are equal
compare equal, sets and dicts are ordered), ``print:<text>`` (returned None but printed),
``!error`` (raised), ``!timeout`` (over its time budget), ``!memory`` (over the memory
limit); the parent adds ``!refused``, ``!missing`` and ``!crashed``.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import io
import json
import math
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

Emit = Callable[[dict[str, object]], None]
Timed = Callable[[Callable[[], Any]], tuple[Any, str]]

# Modules an answer may import: pure computation. Imported before the audit hook goes in, so
# `import math` in an answer finds them in sys.modules and opens no file; importing anything
# else needs a file (refused) or is a built-in module (refused by the hook's import rule).
ALLOWED_MODULES = (
    "array", "bisect", "cmath", "collections", "collections.abc", "copy", "dataclasses",
    "decimal", "enum", "fractions", "functools", "heapq", "itertools", "json", "math",
    "numbers", "operator", "os", "random", "re", "statistics", "string", "textwrap", "typing",
    "unicodedata",
)  # fmt: skip
# Audit events any computation may raise (compiling, exec/eval, id()); every other event is
# refused except the narrow cases in _hook.
ALLOWED_EVENTS = frozenset(("compile", "exec", "builtins.id"))
# Function attributes dataclasses, functools and friends read; frames and globals stay hidden.
READABLE_ATTRIBUTES = frozenset(("__code__", "__defaults__", "__kwdefaults__"))
UNAUDITED = ("mkfifo", "mknod")
"""Functions of ``os`` removed before the hook goes in: they create files without an event."""
MAX_OUTPUT = 4000
MAX_ITEMS = 200
MAX_DEPTH = 12


class CallTimeout(BaseException):
    """A call ran over its budget (raised by the per-call timers' signal handler)."""


def main() -> None:
    """Run the job on stdin; see the module docstring."""
    job = json.loads(sys.stdin.buffer.read())
    _limit(job)
    for name in ALLOWED_MODULES:
        importlib.import_module(name)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))  # stdin, stdout, stderr: no new file
    nonce: str = job["nonce"]

    def emit(record: dict[str, object]) -> None:
        os.write(1, f"{nonce} {json.dumps(record)}\n".encode())

    timed = _timer(float(job["call_cpu_seconds"]), float(job["call_wall_seconds"]))
    for name in ("signal", "_signal", "resource", "importlib"):
        sys.modules.pop(name, None)  # importing these again needs the import machinery: refused
    for module in (os, sys.modules["posix"]):
        for name in UNAUDITED:  # they make files and raise no audit event (CPython 3.11)
            vars(module).pop(name, None)
    sys.addaudithook(_hook_for(emit))
    _run(job["source"], job["function"], job["calls"], emit, timed)


def _run(
    source: str, function: str | None, calls: list[list[Any]], emit: Emit, timed: Timed
) -> None:
    """Execute ``source``, then call ``function`` on each of ``calls``; one line per result."""
    namespace: dict[str, Any] = {"__name__": "__answer__", "__builtins__": builtins}
    try:
        code = compile(source, "<answer>", "exec")
        _, printed = timed(lambda: exec(code, namespace))
        script = "print:" + printed.rstrip()[:MAX_OUTPUT]
    except BaseException as exc:  # the answer's own failure is its output
        script = _failure(exc)
    if function is None:
        emit({"call": 0, "out": script})
        return
    emit({"ready": True})  # what is refused from here on belongs to a call
    target = namespace.get(function)
    if not callable(target):
        emit({"missing": function})
        return
    for index, args in enumerate(calls):
        try:
            out, printed = timed(functools.partial(_called, target, args))
            if out == "None" and printed.strip():
                out = "print:" + printed.rstrip()[:MAX_OUTPUT]
            else:
                out = "=" + out[:MAX_OUTPUT]
        except BaseException as exc:  # the answer's own failure is its output
            out = _failure(exc)
        emit({"call": index, "out": out})


def _called(target: Callable[..., object], args: list[Any]) -> str:
    return _canonical(target(*args))


def _timer(cpu: float, wall: float) -> Timed:
    """Runs a call under a CPU and a wall-clock timer, with its stdout captured."""

    def on_timer(signum: int, frame: object) -> None:
        raise CallTimeout

    signal.signal(signal.SIGPROF, on_timer)
    signal.signal(signal.SIGALRM, on_timer)

    def timed(call: Callable[[], Any]) -> tuple[Any, str]:
        printed = io.StringIO()
        signal.setitimer(signal.ITIMER_PROF, cpu)
        signal.setitimer(signal.ITIMER_REAL, wall)  # time.sleep uses no CPU and no audit event
        try:
            with contextlib.redirect_stdout(printed):
                value = call()
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
        return value, printed.getvalue()

    return timed


def _limit(job: dict[str, Any]) -> None:
    """Soft and hard limits alike, so the code cannot raise them again."""
    cpu, memory = int(job["cpu_seconds"]), int(job["memory_bytes"])
    for limit, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, memory),
    ):
        resource.setrlimit(limit, (value, value))
    # no effect for root (CAP_SYS_RESOURCE); the audit hook refuses fork regardless
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _hook_for(emit: Emit) -> Callable[[str, tuple[object, ...]], None]:
    """The audit hook: allowlisted events pass, the rest raise (and are reported)."""

    def hook(
        event: str,
        args: tuple[object, ...],
        *,
        # bound now: the answer may replace builtins.isinstance, not these references
        _allowed: frozenset[str] = ALLOWED_EVENTS,
        _readable: frozenset[str] = READABLE_ATTRIBUTES,
        _isinstance: Any = isinstance,
        _len: Any = len,
        _emit: Emit = emit,
        _missing: type[Exception] = ModuleNotFoundError,
        _refused: type[Exception] = PermissionError,
    ) -> None:
        if event in _allowed:
            return
        if event == "object.__getattr__" and _len(args) > 1 and args[1] in _readable:
            return
        if event in ("object.__setattr__", "object.__delattr__") and _isinstance(args[0], type):
            return  # class attributes (namedtuple and dataclass set __module__, __doc__)
        if event == "import":
            # a module not loaded yet: a file to open, or a built-in such as gc or _thread.
            # Not reported: answers try `import numpy` and fall back; it is just not there.
            raise _missing(f"No module named {args[0]!r} in the sandbox")
        _emit({"refused": event})
        raise _refused(f"{event} is not allowed in the sandbox")

    return hook


def _failure(exc: BaseException) -> str:
    if isinstance(exc, CallTimeout):
        return "!timeout"
    if isinstance(exc, MemoryError):
        return "!memory"
    return "!error"


def _canonical(value: object, depth: int = 0) -> str:  # noqa: PLR0911 (one return per type)
    """A text equal for equal outputs: 120 and 120.0 alike, sets and dict items sorted.

    Runs under the call's timers: a subclass's ``__iter__`` or ``__float__`` is the answer's code.
    """
    if value is None or isinstance(value, bool):
        return "True" if value is True else "False" if value is False else "None"
    if isinstance(value, int):
        try:
            return int.__repr__(value)
        except ValueError:  # over the int-to-str digit limit
            return f"int~{value.bit_length()}bits"
    if isinstance(value, float):
        return _float(float(value))
    if isinstance(value, complex):
        return f"complex({_float(value.real)}, {_float(value.imag)})"
    if isinstance(value, str | bytes):
        text = value[:MAX_OUTPUT]
        return repr(text) + ("" if len(text) == len(value) else f"+{len(value)}")
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, list | tuple):
        items = [_canonical(v, depth + 1) for v in value[:MAX_ITEMS]]
        more = f", +{len(value)}" if len(value) > MAX_ITEMS else ""
        return ("[{}{}]" if isinstance(value, list) else "({}{})").format(", ".join(items), more)
    if isinstance(value, set | frozenset):
        return "set{" + ", ".join(sorted(_canonical(v, depth + 1) for v in value)) + "}"
    if isinstance(value, dict):
        pairs = list(value.items())[:MAX_ITEMS]
        items = sorted(f"{_canonical(k, depth + 1)}: {_canonical(v, depth + 1)}" for k, v in pairs)
        return "{" + ", ".join(items) + "}"
    return f"<{type(value).__name__}>"  # any other object: its type only


def _float(value: float) -> str:
    if not math.isfinite(value):
        return repr(value)  # nan, inf, -inf
    if value == int(value) and abs(value) < 1e15:
        return repr(int(value))
    return format(value, ".9g")


if __name__ == "__main__":
    main()
