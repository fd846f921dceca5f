"""What per-key rate limits cost the request path: admissions per second and database leases.

    .venv/bin/python -m benchmarks.bench_rate_limits [--postgres URL] [--admits 20000]

For each database (a temporary SQLite file, and Postgres when ``--postgres`` is given) and for
a generous and a tight limit, one worker admits ``--admits`` requests of one key as fast as it
can, 64 at a time, and prints admissions per second, microseconds per admission, and database
leases per 1,000 admissions. The clock is frozen inside one minute, so the tight limit shows the
refusals' cost too.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from sqlalchemy import event

from cascade.ledger import create_engine
from cascade.ledger.migrate import upgrade
from cascade.server.ratelimit import RateLimiter

_MINUTE = 1_800_000_000.0


async def _run(url: str, admits: int, rpm: int, tpm: int | None) -> tuple[float, int, int]:
    engine = create_engine(url)
    statements = 0

    def count(*_args: object) -> None:
        nonlocal statements
        statements += 1

    try:
        await upgrade(engine)
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        limiter = RateLimiter(engine, lambda: _MINUTE + 1)
        key = f"bench-{rpm}-{time.monotonic_ns()}"
        allowed = 0
        started = time.perf_counter()
        for _ in range(admits // 64):
            results = await asyncio.gather(
                *(limiter.admit(key, rpm=rpm, tpm=tpm, tokens=300) for _ in range(64))
            )
            allowed += sum(a.allowed for a in results)
        seconds = time.perf_counter() - started
        return seconds, allowed, statements
    finally:
        await engine.dispose()


def main() -> None:
    """Print admissions/s and leases per 1,000 admissions for each database and limit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--postgres", help="also measure on this Postgres URL")
    parser.add_argument("--admits", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = [("sqlite", f"sqlite:///{Path(tmp) / 'rl.db'}")]
        if args.postgres:
            urls.append(("postgres", args.postgres))
        print(
            f"{'database':>9} {'rpm':>9} {'admitted':>9} {'admits/s':>10} {'us/admit':>9}"
            f" {'statements/1k':>14}"
        )
        for name, url in urls:
            for rpm, tpm in ((10_000_000, 3_000_000_000), (6_000, None)):
                seconds, allowed, statements = asyncio.run(_run(url, args.admits, rpm, tpm))
                n = args.admits // 64 * 64
                print(
                    f"{name:>9} {rpm:>9} {allowed:>9} {n / seconds:>10.0f} "
                    f"{seconds / n * 1e6:>9.1f} {statements / n * 1000:>14.1f}"
                )


if __name__ == "__main__":
    main()
