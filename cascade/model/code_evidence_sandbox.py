"""Run untrusted Python (an answer's code) in a separate, limited interpreter.

Each :class:`Program` runs in its own child process, ``python -S -s -P -B`` executing
:mod:`cascade.model.code_evidence_child`, never in the router's process. The layers, outermost
first:

- **the process**: its own session (killed as a group), an empty temporary working directory
  (removed after; a file left in it marks the run as failed), an environment of three variables,
  no inherited file descriptors, stderr to ``/dev/null``;
- **a wall-clock deadline** (:attr:`Limits.wall_seconds`) after which the parent kills it, and a
  cap on what it may write to stdout;
- **resource limits** set by the child on itself before the code runs, soft equal to hard:
  ``RLIMIT_CPU`` (:attr:`Limits.cpu_seconds`), ``RLIMIT_AS`` (:attr:`Limits.memory_bytes`),
  ``RLIMIT_FSIZE`` 0 (no byte written to any file), ``RLIMIT_CORE`` 0, ``RLIMIT_NOFILE`` 3 (no
  new file descriptor: no file, socket or pipe can be opened even past the hook) and
  ``RLIMIT_NPROC`` 0 (no fork; ignored for root);
- **an audit hook** (:pep:`578`) installed before the code runs that refuses every event outside
  a short allowlist (compile, exec, ``id``): ``open`` of any file, sockets, ``os.system``,
  ``subprocess``, ``os.exec*``, ``os.fork``, ``os.kill``, ``ctypes``, directory listing,
  ``sys._getframe`` and traceback frames, ``sys.settrace``, ``input``... and an import of any
  module that is not already loaded (the child pre-imports ``math``, ``re``, ``collections``
  and other pure modules, see ``ALLOWED_MODULES``);
- **per-call timers**: CPU (:attr:`Limits.call_cpu_seconds`) and wall clock
  (:attr:`Limits.call_wall_seconds`), so one looping input does not take the others with it.

Limits, stated plainly: an audit hook is not a kernel sandbox. It guards the Python-level
entry points; code that corrupts the interpreter's memory (CPython has known crashers) or a
C function that raises no audit event is not stopped by it. ``os.stat``, ``os.readlink`` and
``os.access`` raise no event in CPython 3.11, so the code can learn whether a path exists,
though not read it; ``os.mkfifo`` and ``os.mknod`` raise none either and are deleted from ``os``
before the code runs. Behind the hook the resource limits still hold (no new descriptor, no
byte written, bounded CPU, memory and time), but ``RLIMIT_NPROC`` binds only a non-root user.
Run the router as an unprivileged user; for hostile traffic add a kernel boundary (a container
with seccomp, gVisor, nsjail) around it.

The interpreter runs with ``-S -s -P -B`` and an environment built whole, rather than ``-I``:
``-I`` would also ignore ``PYTHONHASHSEED``, and the hash seed must be the same in every child,
or two identical programs iterating a set of strings would disagree.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

__all__ = ["DEFAULT_LIMITS", "Limits", "Program", "Run", "Value", "run_programs"]

Value: TypeAlias = int | float | str | bool | list["Value"] | dict[str, "Value"] | None
"""An argument of a call: what JSON carries."""

CHILD = Path(__file__).with_name("code_evidence_child.py")
ENVIRONMENT = {"PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"}
FLAGS = ("-S", "-s", "-P", "-B")
"""No site, no user site, no script directory on ``sys.path``, no bytecode written."""


@dataclass(frozen=True)
class Limits:
    """What one program may use."""

    cpu_seconds: int = 1
    memory_bytes: int = 256 * 2**20
    wall_seconds: float = 5.0
    """For the whole process, start-up included; programs of one check run in parallel."""
    call_cpu_seconds: float = 0.1
    call_wall_seconds: float = 0.5
    output_bytes: int = 256 * 2**10


@dataclass(frozen=True)
class Program:
    """One answer's code, and what to call in it.

    ``function`` None runs the code as a script: its one output is what it prints.
    """

    source: str
    function: str | None
    calls: tuple[tuple[Value, ...], ...] = ()


@dataclass(frozen=True)
class Run:
    """What a program did: one output per call (see ``code_evidence_child``), and whether the
    run failed as a whole (``failure``: why; None when it ran to the end)."""

    outputs: tuple[str, ...]
    failure: str | None = None
    refused: tuple[str, ...] = field(default=())
    """Audit events the hook refused, in order (``open``, ``os.system``, ...)."""


@dataclass
class _Child:
    program: Program
    workdir: Path
    process: subprocess.Popen[bytes]
    nonce: str
    output: bytearray = field(default_factory=bytearray)
    failure: str | None = None


DEFAULT_LIMITS = Limits()


def run_programs(programs: Sequence[Program], limits: Limits = DEFAULT_LIMITS) -> list[Run]:
    """Run each program in its own sandboxed interpreter, all at once; results in order.

    Blocks for up to :attr:`Limits.wall_seconds`: call it off the event loop
    (``asyncio.to_thread``).
    """
    if not programs:
        return []
    with tempfile.TemporaryDirectory(prefix="cascade-sandbox-") as root:
        children: list[_Child] = []
        try:
            for i, program in enumerate(programs):
                children.append(_start(program, Path(root) / str(i), limits))
            _collect(children, limits)
        finally:
            for child in children:
                _stop(child)
        return [_result(child) for child in children]


def _start(program: Program, workdir: Path, limits: Limits) -> _Child:
    workdir.mkdir(mode=0o700)
    nonce = secrets.token_hex(16)
    job = {
        "nonce": nonce,
        "source": program.source,
        "function": program.function,
        "calls": [list(args) for args in program.calls],
        "cpu_seconds": limits.cpu_seconds,
        "memory_bytes": limits.memory_bytes,
        "call_cpu_seconds": limits.call_cpu_seconds,
        "call_wall_seconds": limits.call_wall_seconds,
    }
    process = subprocess.Popen(
        [sys.executable, *FLAGS, str(CHILD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        env=ENVIRONMENT,
        close_fds=True,
        start_new_session=True,
    )
    child = _Child(program, workdir, process, nonce)
    assert process.stdin is not None
    try:  # the child reads its whole job before it writes a byte: this cannot deadlock
        process.stdin.write(json.dumps(job).encode())
        process.stdin.close()
    except BrokenPipeError:
        child.failure = "crashed before reading its job"
    return child


def _collect(children: list[_Child], limits: Limits) -> None:
    """Read every child's stdout until it closes, its cap, or the shared deadline."""
    deadline = time.monotonic() + limits.wall_seconds
    with selectors.DefaultSelector() as selector:
        for child in children:
            assert child.process.stdout is not None
            selector.register(child.process.stdout, selectors.EVENT_READ, child)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                for key in list(selector.get_map().values()):
                    key.data.failure = key.data.failure or "timed out"
                    _kill(key.data)
                return
            for key, _ in selector.select(timeout=left):
                child = key.data
                chunk = os.read(key.fd, 65536)
                if chunk:
                    child.output += chunk
                if not chunk or len(child.output) > limits.output_bytes:
                    if chunk:
                        child.failure = "wrote too much output"
                        _kill(child)
                    selector.unregister(key.fileobj)
    for child in children:  # stdout closed: the process is exiting
        try:
            child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.failure = child.failure or "timed out"
            _kill(child)


def _kill(child: _Child) -> None:
    if child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.killpg(child.process.pid, signal.SIGKILL)  # its own session: pgid == pid


def _stop(child: _Child) -> None:
    _kill(child)
    child.process.wait()
    for pipe in (child.process.stdin, child.process.stdout):
        if pipe is not None and not pipe.closed:
            with contextlib.suppress(BrokenPipeError):  # closing flushes the unread job
                pipe.close()


def _result(child: _Child) -> Run:
    """The child's lines read into one output per call; what is missing says how it ended."""
    calls = len(child.program.calls) if child.program.function is not None else 1
    outputs: dict[int, str] = {}
    refused: list[str] = []
    refused_at: set[int] = set()
    ready = whole = False  # whole: refused at the top level of the code, before any call
    prefix = child.nonce.encode() + b" "
    for line in bytes(child.output).splitlines():
        if not line.startswith(prefix):
            continue  # the code's own writes to the real stdout
        record = json.loads(line[len(prefix) :])
        if "refused" in record:
            refused.append(str(record["refused"]))
            if ready or child.program.function is None:
                refused_at.add(len(outputs))
            else:
                whole = True
        elif "ready" in record:
            ready = True
        elif "missing" in record:
            outputs = dict.fromkeys(range(calls), "!missing")
        elif "call" in record:
            outputs[int(record["call"])] = str(record["out"])
    failure = child.failure or _ending(child.process.returncode, len(outputs) < calls)
    if any(child.workdir.iterdir()):
        failure = "left files in its working directory"
    missing = "!timeout" if failure and ("time" in failure or "CPU" in failure) else "!crashed"
    result = tuple(
        "!refused" if whole or i in refused_at else outputs.get(i, missing) for i in range(calls)
    )
    return Run(result, failure, tuple(refused))


def _ending(returncode: int | None, incomplete: bool) -> str | None:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        # SIGXCPU: the CPU limit; SIGKILL: its hard limit (or the kernel out of memory)
        return "ran out of CPU time" if name in ("SIGXCPU", "SIGKILL") else f"killed by {name}"
    if returncode:
        return f"exited with status {returncode}"
    return "stopped before its last call" if incomplete else None
