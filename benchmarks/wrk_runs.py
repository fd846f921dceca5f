"""wrk runs for the proxy benchmarks: one run's figures, and the CPU the serving process used."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median

__all__ = ["Run", "cpu_seconds", "measured", "pooled", "wrk_run"]


@dataclass(frozen=True)
class Run:
    """One wrk run."""

    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its worker processes, from /proc (0 elsewhere)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) for child in children)


def wrk_run(url: str, concurrency: int, seconds: int, script: Path) -> Run:
    """Drive ``url`` with wrk (one thread, ``concurrency`` connections, the request in
    ``script``) for ``seconds``, and read its figures."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"cannot read the {label}th percentile from wrk:\n{out}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Run(count, rps, latency("50"), latency("99"), int(errors.group(1)) if errors else 0)


def measured(url: str, pid: int, concurrency: int, seconds: int, script: Path) -> tuple[Run, float]:
    """One wrk run on ``url``'s chat route and the serving process's CPU per request over it,
    in microseconds."""
    cpu = cpu_seconds(pid)
    run = wrk_run(f"{url}/v1/chat/completions", concurrency, seconds, script)
    return run, 1e6 * (cpu_seconds(pid) - cpu) / max(run.requests, 1)


def pooled(runs: Sequence[tuple[Run, float]]) -> tuple[Run, float]:
    """Runs of equal length as one: each figure the median of the runs' (errors summed), so a
    run slowed by something else on the machine does not move it."""
    merged = Run(
        requests=sum(run.requests for run, _ in runs),
        requests_per_s=median(run.requests_per_s for run, _ in runs),
        p50_ms=median(run.p50_ms for run, _ in runs),
        p99_ms=median(run.p99_ms for run, _ in runs),
        errors=sum(run.errors for run, _ in runs),
    )
    return merged, median(cpu for _, cpu in runs)
