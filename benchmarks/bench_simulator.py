"""Throughput of the simulated tiers: the timing model's tokens/s at batch 1, 16 and 64.

Reference (DESIGN.md, one H100, 4-bit, batch 64): distilled 1.5B ~32,000 tok/s, 7B ~14,500.
The model's numbers are exact (no randomness); ``--http`` also measures them through a running
server: concurrent requests, throughput read from its /metrics as generated tokens per
simulated busy second.

    .venv/bin/python -m benchmarks.bench_simulator [--context 3200] [--http]
"""

from __future__ import annotations

import argparse
import asyncio
import re

import httpx

from cascade.simulator.profiles import (
    PROFILES,
    REFERENCE_CONTEXT_TOKENS,
    ApiTiming,
    GpuTiming,
    decode_throughput,
)
from tests.servers import running_tier

_BATCHES = (1, 16, 64)
_REFERENCE = {"1.5b": "32,000", "7b": "14,500", "frontier": "50-100 per stream"}


def model_table(context: int) -> list[str]:
    """One line per profile: tokens/s at each batch size, from the equations."""
    lines = [f"timing model, {context} tokens of context per sequence (tok/s):"]
    lines.append(
        f"{'profile':>9} " + " ".join(f"{'B=' + str(b):>9}" for b in _BATCHES) + "  reference@64"
    )
    for name, profile in PROFILES.items():
        timing = profile.timing
        if isinstance(timing, GpuTiming):
            values = [decode_throughput(timing, b, context) for b in _BATCHES]
        else:
            assert isinstance(timing, ApiTiming)
            rate = sum(timing.tokens_per_second) / 2  # independent streams: rate x streams
            values = [rate * b for b in _BATCHES]
        cells = " ".join(f"{v:>9,.0f}" for v in values)
        lines.append(f"{name:>9} {cells}  {_REFERENCE[name]}")
    return lines


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _measure(url: str, model: str, batch: int) -> tuple[float, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "Describe the water cycle."}]}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        before = (await client.get("/metrics")).text
        await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(batch))
        )
        after = (await client.get("/metrics")).text
    tokens = _metric(after, "vllm:generation_tokens_total") - _metric(
        before, "vllm:generation_tokens_total"
    )
    busy = _metric(after, "simulator_busy_seconds_total") - _metric(
        before, "simulator_busy_seconds_total"
    )
    steps = _metric(after, "simulator_steps_total") - _metric(before, "simulator_steps_total")
    return tokens / busy, tokens / steps


def http_table() -> list[str]:
    """Measured through HTTP on a loopback server (short prompts: little KV to read)."""
    lines = ["through HTTP, short prompts: tok/s per simulated busy second (mean batch):"]
    for name in ("1.5b", "7b"):
        # Slower than real time, so that all requests of a burst join the batch together.
        with running_tier(name, time_scale=20.0) as url:
            model = PROFILES[name].models[0]
            values = [asyncio.run(_measure(url, model, b)) for b in _BATCHES]
        cells = " ".join(f"{rate:>9,.0f} ({batch:4.1f})" for rate, batch in values)
        lines.append(f"{name:>9} {cells}")
    return lines


def main() -> None:
    """Print the table(s)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--context", type=int, default=REFERENCE_CONTEXT_TOKENS)
    parser.add_argument("--http", action="store_true", help="also measure through a server")
    args = parser.parse_args()
    print("\n".join(model_table(args.context)))
    if args.http:
        print("\n".join(http_table()))


if __name__ == "__main__":
    main()
