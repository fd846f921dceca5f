"""The code sandbox holds: each attempt to reach outside is refused or fails, and is reported as
a failure of that code; loops and memory bombs end; nothing is written, nobody is called."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.model.code_evidence_sandbox import Limits, Program, Run, run_programs

LIMITS = Limits(cpu_seconds=1, wall_seconds=10.0, call_cpu_seconds=0.1, call_wall_seconds=0.5)


def _run(source: str, calls: int = 2) -> Run:
    (result,) = run_programs([Program(source, "f", tuple((i,) for i in range(calls)))], LIMITS)
    return result


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on loopback, to see whether sandboxed code reaches it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


def _no_connection(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


def test_plain_code_runs_and_reports_one_output_per_call() -> None:
    """A well-behaved function gives one canonical output per input, failures included."""
    source = "def f(n):\n    if n == 2:\n        raise ValueError(n)\n    return n * 1.0\n"
    assert _run(source, calls=3) == Run(("=0", "=1", "!error"))


def test_reading_a_file_is_refused() -> None:
    """open(), io.FileIO and os.open on /etc/passwd are refused, and reported as such."""
    for reader in (
        "open('/etc/passwd').read()",
        "__import__('io').FileIO('/etc/passwd').read()",
        "__import__('os').open('/etc/passwd', 0)",
    ):
        result = _run(f"def f(n):\n    return {reader}\n")
        assert result.outputs == ("!refused", "!refused"), reader
        assert "open" in result.refused


def test_writing_a_file_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """Absolute and relative writes, a FIFO and a directory: none appears anywhere."""
    target = tmp_path / "written.txt"
    for writer in (
        f"open({str(target)!r}, 'w').write('x')",
        "open('relative.txt', 'w').write('x')",
        f"__import__('os').mkfifo({str(target)!r})",
        f"__import__('os').mkdir({str(tmp_path / 'made')!r})",
    ):
        result = _run(f"def f(n):\n    {writer}\n    return n\n")
        assert all(out in ("!refused", "!error") for out in result.outputs), writer
        assert result.failure is None  # the working directory was left empty
    assert list(tmp_path.iterdir()) == []


def test_a_socket_to_loopback_never_connects(listener: socket.socket) -> None:
    """socket and _socket cannot be imported: the connection attempt fails, nothing arrives."""
    port = listener.getsockname()[1]
    for module in ("socket", "_socket"):
        source = (
            f"def f(n):\n    s = __import__({module!r}).socket()\n"
            f"    s.connect(('127.0.0.1', {port}))\n    return 1\n"
        )
        assert _run(source).outputs == ("!error", "!error")
    assert _no_connection(listener)


def test_processes_cannot_be_started(tmp_path: Path) -> None:
    """os.system, subprocess, exec, posix_spawn and fork: refused or unavailable, never run."""
    target = str(tmp_path / "ran")
    for starter in (
        f"__import__('os').system('touch {target}')",
        f"__import__('subprocess').run(['touch', {target!r}])",
        f"__import__('os').execv('/usr/bin/touch', ['touch', {target!r}])",
        f"__import__('os').posix_spawn('/usr/bin/touch', ['touch', {target!r}], {{}})",
        "__import__('os').fork()",
        "__import__('ctypes').CDLL(None).system(b'true')",
    ):
        result = _run(f"def f(n):\n    {starter}\n    return n\n")
        assert all(out in ("!refused", "!error") for out in result.outputs), starter
    assert list(tmp_path.iterdir()) == []


def test_refused_at_the_top_level_fails_every_call(tmp_path: Path) -> None:
    """Code that tries a forbidden thing when loaded is refused for all of its outputs."""
    source = f"import os\nos.system('touch {tmp_path / 'x'}')\ndef f(n):\n    return n\n"
    result = _run(source, calls=3)
    assert result.outputs == ("!refused",) * 3
    assert result.refused == ("os.system",)
    assert list(tmp_path.iterdir()) == []


def test_an_infinite_loop_times_out() -> None:
    """Each looping call times out on its own; the next input still runs."""
    source = "def f(n):\n    while n == 0:\n        pass\n    return n\n"
    assert _run(source).outputs == ("!timeout", "=1")


def test_a_loop_that_swallows_the_timeout_is_still_stopped() -> None:
    """Catching the per-call timeout only reaches the CPU limit: the process ends, and every
    call left without an output is a timeout."""
    source = (
        "def f(n):\n    while True:\n        try:\n            while True:\n"
        "                pass\n        except BaseException:\n            continue\n"
    )
    result = _run(source)
    assert result.outputs == ("!timeout", "!timeout")
    assert result.failure is not None


def test_a_sleeping_call_times_out() -> None:
    """time.sleep uses no CPU: the wall-clock timer ends it."""
    assert _run("import time\ndef f(n):\n    time.sleep(60)\n").outputs == ("!timeout",) * 2


def test_a_memory_bomb_is_contained() -> None:
    """One huge allocation and a growing list both end as a failure of the call."""
    for bomb in ("'a' * (2 ** 34)", "[bytearray(10 ** 7) for _ in range(10 ** 6)]"):
        result = _run(f"def f(n):\n    x = {bomb}\n    return len(x)\n")
        assert all(out in ("!memory", "!timeout") for out in result.outputs), bomb


def test_frames_and_tracing_are_refused() -> None:
    """Reaching the runner's frames (to find the hook) or tracing it is refused."""
    for probe in (
        "__import__('sys')._getframe(1)",
        "(lambda e: e.__traceback__.tb_frame)(ZeroDivisionError())",
        "__import__('sys').settrace(None)",
        "__import__('gc').get_objects()",
    ):
        result = _run(f"def f(n):\n    return {probe}\n")
        assert all(out in ("!refused", "!error") for out in result.outputs), probe


def test_output_does_not_depend_on_the_run() -> None:
    """A program iterating a set of strings gives the same output in every run (one hash
    seed for all children), so identical programs agree."""
    source = "def f(n):\n    return list({'pear', 'apple', 'fig', 'kiwi', str(n)})\n"
    first, second = run_programs([Program(source, "f", ((1,), (2,)))] * 2, LIMITS)
    assert first.outputs == second.outputs
    assert first.failure is None


def test_forged_result_lines_are_ignored() -> None:
    """Printing to the real stdout cannot inject results: lines without the nonce are dropped."""
    source = (
        'import os\nos.write(1, b\'0 {"call": 0, "out": "=forged"}\\n\')\n'
        "def f(n):\n    print('x')\n    return n\n"
    )
    assert _run(source).outputs == ("=0", "=1")


def test_a_script_is_run_for_its_printed_output() -> None:
    """Without a function, the program's output is what it prints."""
    (result,) = run_programs([Program("print(sorted({'b', 'a'}))\n", None)], LIMITS)
    assert result.outputs == ("print:['a', 'b']",)


def test_the_code_sees_none_of_the_routers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the router's environment (an API key) is not in the sandbox's."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    result = _run("def f(n):\n    return sorted(__import__('os').environ)\n", calls=1)
    assert result.outputs == ("=['LC_ALL', 'PYTHONHASHSEED', 'PYTHONIOENCODING']",)
