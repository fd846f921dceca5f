"""Starting the servers a benchmark drives: one process each, ready when its URL answers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def started(
    args: list[str], ready_url: str, *, log: Path | None = None, timeout_s: float = 120
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` (output to ``log``, else stderr kept for the error), wait until
    ``ready_url`` answers below 500, yield the process, and stop it if it still runs."""
    if log is not None:
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                said = f"see {log}" if log else (proc.stderr.read().decode() if proc.stderr else "")
                raise RuntimeError(f"{' '.join(args[:5])} did not start: {said}")
            try:
                if httpx.get(ready_url, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:  # a benchmark may have killed it itself
            proc.terminate()
        proc.wait(30)
