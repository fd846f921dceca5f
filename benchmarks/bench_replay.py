"""``cascade replay`` on a ledger of a million requests in Postgres: wall time, rows/s, peak RSS.

Makes a fresh database on the server of ``--url`` (dropped afterwards unless ``--keep``),
migrates it (``cascade db upgrade``), fills it with ``--requests`` logged requests by ``COPY``
(real prompts cycled, the default policy with exploration 0.1, outcomes drawn from the prompts'
real weak and strong scores: :mod:`benchmarks.replay_traffic`, in a process of its own), runs
``VACUUM ANALYZE`` as a settled ledger would have had, then times ``cascade replay`` in a
subprocess (``--runs`` times) on a candidate with lower thresholds (small 0.80, medium 0.70
against 0.825 and 0.742). Prints each run's wall seconds, rows/s and the peak RSS of the replay
process (its own ``wait4`` usage; this process stays small, so a fork of it adds nothing), then
replay's figures beside the truth the generator knows (every request's outcome on every tier
was drawn).

    .venv/bin/python -m benchmarks.bench_replay [--url postgresql://postgres@127.0.0.1:5432/test]
        [--requests 1000000] [--runs 2] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
LOGGED, CANDIDATE = (0.825, 0.742), (0.80, 0.70)  # as benchmarks.replay_traffic has them
FIGURES = ("mean_cost_usd", "cost_per_useful_token", "escalation_rate", "good_rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2, help="replays to time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"cascade_bench_replay_{secrets.token_hex(4)}"
    admin = args.url.replace("postgresql://", "postgres://", 1)
    url = args.url.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    try:
        _cascade("db", "upgrade", "--url", url)
        fill = [sys.executable, "-m", "benchmarks.replay_traffic", url, str(args.requests)]
        filled = subprocess.run(
            [*fill, str(args.seed)], check=False, stdout=subprocess.PIPE, text=True
        )
        if filled.returncode:
            raise SystemExit(f"filling the ledger failed ({filled.returncode})")
        *said, last = filled.stdout.strip().splitlines()
        print("\n".join(said), flush=True)
        truth: dict[str, dict[str, float]] = json.loads(last)
        with tempfile.TemporaryDirectory() as folder:
            candidate = _candidate(Path(folder))
            for run in range(1, args.runs + 1):
                report = _time_replay(url, candidate, run)
        _compare(report, truth)
    finally:
        if args.keep:
            print(f"kept {url}")
        else:
            asyncio.run(_execute(admin, f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _cascade(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cascade", *args], check=True, cwd=ROOT)


def _candidate(folder: Path) -> Path:
    """The default policy with the candidate's thresholds (same name: it replays its traffic)."""
    text = (ROOT / "policies" / "default.yaml").read_text(encoding="utf-8")
    for old, new in zip(LOGGED, CANDIDATE, strict=True):
        text = text.replace(f"threshold: {old}", f"threshold: {new}")
    path = folder / "candidate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _time_replay(url: str, candidate: Path, run: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "cascade", "replay", "--policy", str(candidate)]
    command += ["--url", url, "--since", "7d", "--json"]
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if child.returncode not in (0, 1):
        raise SystemExit(f"cascade replay failed ({child.returncode})")
    report: dict[str, Any] = json.loads(text)
    rows = report["replayed"]
    print(
        f"run {run}: cascade replay on {rows:,} of {report['requests']:,} requests in "
        f"{wall:.1f} s wall ({rows / wall:,.0f} rows/s), {usage.ru_utime:.1f} s user CPU, "
        f"peak RSS {usage.ru_maxrss / 1024:,.0f} MB",
        flush=True,
    )
    print("  " + " ".join(command).replace(str(candidate), "CANDIDATE.yaml"))
    return report


def _compare(report: dict[str, Any], truth: dict[str, dict[str, float]]) -> None:
    estimate = report["estimate"]
    print(
        f"\nsupported: {estimate['supported']}; effective sample {estimate['ess']:,.0f} of "
        f"{estimate['matched']:,} matched; unsupported {estimate['unsupported_share']:.2%}"
    )
    head = f"{'figure':<24}{'logged':>13}{'(generator)':>13}   {'estimate [95%]':<38}"
    print(f"{head}{'truth':>12}")
    for key in FIGURES:
        measured = estimate["logged"][key]["value"]
        guess = (estimate["candidate"] or {}).get(key)
        actual = truth["candidate"][key]
        shown, inside = "-", ""
        if guess is not None:
            shown = f"{guess['value']:.6g} [{guess['low']:.6g}, {guess['high']:.6g}]"
            inside = " in" if guess["low"] <= actual <= guess["high"] else " OUT"
        row = f"{key:<24}{measured:>13.6g}{truth['logged'][key]:>13.6g}   {shown:<38}"
        print(f"{row}{actual:>12.6g}{inside}")


if __name__ == "__main__":
    main()
