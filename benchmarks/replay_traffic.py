"""A ledger's worth of logged traffic for ``bench_replay``: real prompts, realistic routing.

    .venv/bin/python -m benchmarks.replay_traffic URL REQUESTS SEED

fills the (migrated) Postgres ledger at URL by ``COPY`` and prints, as its last line, the JSON
of the logged policy's and the candidate's true figures. It runs in a process of its own, so
the replay the benchmark then starts is not charged for this one's memory.

The prompts are ``../shared/data/train`` (RouteLLM's MMLU and GSM8K rows: each prompt with the
real weak and strong model's score and cost), cycled; each gets the scorer numbers the proxy
would keep (``prompt_features``, as JSON) and the shipped model's confidence. The logged policy
is ``policies/default.yaml`` (small, medium, frontier; the batch workload allows the first two)
with ``learning.explore`` (0.1): a request the thresholds send above small goes to one of the
cheaper tiers with that probability, each equally likely, and records its propensity.

Every request's outcome is drawn once for each tier it could start on, with the same random
numbers, so the truth of any candidate is known: the answer of small is the weak model's, of
frontier the strong model's, of medium the weak one's or, half the time, the strong one's; a
bad answer is caught by the verify step 80% of the time and goes up a tier (each call paid:
small at a quarter of the weak model's cost, medium at 0.6 of it, frontier at the strong
model's); 0.5% of requests fail; half the bad answers that get through are marked useless.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from cascade.model.features import PROMPT_FEATURES_VERSION, prompt_features
from cascade.model.scorer import OnnxScorer
from cascade.server.recording import features_text

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
FILES = ("routellm_mmlu.jsonl", "routellm_gsm8k.jsonl")
TIERS = ("small", "medium", "frontier")
LOGGED = (0.825, 0.742)
"""The default policy's thresholds of small and medium."""
CANDIDATE = (0.80, 0.70)
"""The candidate's: lower, so more traffic starts cheaper (what exploration shows)."""
EXPLORE = 0.1
BATCH_SHARE = 0.1
"""Requests of the batch workload (small and medium only)."""

REQUEST_COLUMNS = (
    "request_id", "created_at", "tenant", "policy", "policy_version", "workload", "confidence",
    "decision_reason", "first_tier", "final_tier", "status", "http_status", "latency_ms",
    "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd", "useful_tokens",
    "useless", "estimated", "stream", "features", "feature_version", "decided_tier",
    "propensity", "explored",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "request_id", "seq", "tier", "model", "role", "outcome", "prompt_tokens", "cached_tokens",
    "completion_tokens", "cost_usd", "estimated", "latency_ms",
)  # fmt: skip

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Prompts:
    """The real prompts, each with its features, confidence, and the models' scores and costs."""

    features: list[str]
    confidence: _Floats
    weak_good: npt.NDArray[np.bool_]
    strong_good: npt.NDArray[np.bool_]
    weak_cost: _Floats
    strong_cost: _Floats

    @classmethod
    def load(cls) -> Prompts:
        rows = [json.loads(line) for name in FILES for line in (DATA / name).open()]
        matrix = np.array([prompt_features(r["prompt"]) for r in rows], dtype=np.float32)
        scorer = OnnxScorer(device="cpu")
        return cls(
            features=[features_text(tuple(row.tolist())) for row in matrix],
            confidence=scorer.score_rows(matrix),
            weak_good=np.array([r["weak_score"] >= 0.5 for r in rows]),
            strong_good=np.array([r["strong_score"] >= 0.5 for r in rows]),
            weak_cost=np.array([r["weak_cost_usd"] for r in rows]),
            strong_cost=np.array([r["strong_cost_usd"] for r in rows]),
        )


def by_thresholds(confidence: _Floats, top: _Ints, thresholds: tuple[float, float]) -> _Ints:
    """Each request's tier index: the first threshold cleared, else its workload's last tier."""
    medium = np.where(confidence >= thresholds[1], np.minimum(1, top), top)
    return np.where(confidence >= thresholds[0], 0, medium)


@dataclass
class Truth:
    """Plain sums of a policy's outcomes over every request."""

    rows: int = 0
    cost: float = 0.0
    useful: float = 0.0
    escalated: float = 0.0
    good: float = 0.0

    def add(self, outcome: dict[str, Any]) -> None:
        self.rows += len(outcome["cost"])
        self.cost += float(outcome["cost"].sum())
        self.useful += float(outcome["useful"].sum())
        self.escalated += float(outcome["escalated"].sum())
        self.good += float(outcome["good"].sum())

    def figures(self) -> dict[str, float]:
        return {
            "mean_cost_usd": self.cost / self.rows,
            "cost_per_useful_token": self.cost / self.useful,
            "escalation_rate": self.escalated / self.rows,
            "good_rate": self.good / self.rows,
        }


class Traffic:
    """Batches of request and attempt rows for ``COPY``, and the truth of the candidate."""

    def __init__(self, prompts: Prompts, seed: int) -> None:
        self.prompts, self.rng = prompts, np.random.default_rng(seed)
        self.logged, self.candidate = Truth(), Truth()
        self.now = datetime.now(UTC)

    def batches(self, total: int, size: int) -> Iterator[tuple[list[tuple[Any, ...]], ...]]:
        for start in range(0, total, size):
            yield self.batch(start, min(size, total - start))

    def batch(self, start: int, n: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Requests ``start`` .. ``start + n``: their ledger rows, and the truth added up."""
        p, rng = self.prompts, self.rng
        idx = (start + np.arange(n)) % len(p.features)
        top = np.where(rng.random(n) < BATCH_SHARE, 1, 2)
        confidence = p.confidence[idx]
        decided = by_thresholds(confidence, top, LOGGED)
        draw = rng.random(n)
        explored = (decided > 0) & (draw < EXPLORE)
        first = np.where(explored, (draw / EXPLORE * decided).astype(np.int64), decided)
        stay = np.where(decided == 0, 1.0, 1 - EXPLORE)
        propensity = np.where(explored, EXPLORE / np.maximum(decided, 1), stay)
        outcomes = self._outcomes(idx, top, rng.random((4, n)))
        logged = _on(outcomes, first)
        self.logged.add(logged)
        self.candidate.add(_on(outcomes, by_thresholds(confidence, top, CANDIDATE)))
        ledger = Logged(idx, top, confidence, decided, first, propensity, explored)
        return self._rows(start, ledger, logged, outcomes["price"])

    def _outcomes(self, idx: _Ints, top: _Ints, u: _Floats) -> dict[str, Any]:
        """What happens to each request on each tier it could start on: arrays with a first
        axis of 3 (the starting tier), and the price of each tier's call."""
        p = self.prompts
        weak, strong = p.weak_good[idx], p.strong_good[idx]
        good = np.stack([weak, weak | (strong & (u[0] < 0.5)), strong])
        price = np.stack([0.25 * p.weak_cost[idx], 0.6 * p.weak_cost[idx], p.strong_cost[idx]])
        rows = np.arange(len(idx))
        failed = u[2] < 0.005
        tokens = 100 + idx % 300
        out: dict[str, list[Any]] = {}
        for start in range(3):
            tier = np.minimum(start, top)
            cost, path = price[tier, rows], [tier]
            for _ in range(2):  # a caught bad answer goes up, while there is a tier above
                up = ~good[tier, rows] & (u[1] < 0.8) & (tier < top)
                tier = np.where(up, tier + 1, tier)
                cost = cost + np.where(up, price[tier, rows], 0.0)
                path.append(np.where(up, tier, -1))
            bad = ~good[tier, rows] & ~failed
            useless = bad & (u[3] < 0.5)
            for key, value in (
                ("cost", cost),
                ("useful", np.where(failed | useless, 0, tokens)),
                ("escalated", path[1] >= 0),
                ("good", ~failed & ~useless),  # as the ledger sees it: answered, not useless
                ("useless", useless),
                ("final", tier),
                ("path", np.stack(path, axis=1)),
            ):
                out.setdefault(key, []).append(value)
        stacked = {key: np.stack(values) for key, values in out.items()}
        return stacked | {"failed": failed, "tokens": tokens, "price": price}

    def _rows(
        self, start: int, r: Logged, out: dict[str, Any], price: _Floats
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        requests, attempts = [], []
        features, now = self.prompts.features, self.now
        paths, prices = out["path"].tolist(), price.T.tolist()
        for i in range(len(r.idx)):
            rid = f"bench-{start + i:07d}"
            tokens, failed = int(out["tokens"][i]), bool(out["failed"][i])
            calls = [t for t in paths[i] if t >= 0]
            for seq, tier in enumerate(calls):
                last = seq == len(calls) - 1
                attempts.append((
                    rid, seq, TIERS[tier], TIERS[tier], "escalation" if seq else "primary",
                    ("error" if failed else "ok") if last else "rejected", 400, 0, tokens,
                    Decimal(f"{prices[i][tier]:.10f}"), False, 300.0,
                ))  # fmt: skip
            requests.append((
                rid, now - timedelta(seconds=(start + i) % 500_000), f"tenant-{(start + i) % 5}",
                "default", "bench", "interactive" if r.top[i] == 2 else "batch",
                float(r.confidence[i]), "thresholds", TIERS[r.first[i]],
                None if failed else TIERS[out["final"][i]], "error" if failed else "ok",
                502 if failed else 200, 300.0, 400 * len(calls), 0, tokens * len(calls),
                Decimal(f"{out['cost'][i]:.10f}"), int(out["useful"][i]),
                bool(out["useless"][i]), False, False, features[r.idx[i]],
                PROMPT_FEATURES_VERSION, TIERS[r.decided[i]], float(r.propensity[i]),
                bool(r.explored[i]),
            ))  # fmt: skip
        return requests, attempts


@dataclass(frozen=True)
class Logged:
    """How a batch of requests was routed: prompt, top tier, confidence, decision, first tier."""

    idx: _Ints
    top: _Ints
    confidence: _Floats
    decided: _Ints
    first: _Ints
    propensity: _Floats
    explored: npt.NDArray[np.bool_]


def _on(outcomes: dict[str, Any], tier: _Ints) -> dict[str, Any]:
    """Each request's outcome when it starts on ``tier`` (per-tier keys picked, others kept)."""
    rows = np.arange(len(tier))
    picked = {
        k: v[tier, rows] for k, v in outcomes.items() if k not in ("failed", "tokens", "price")
    }
    return outcomes | picked


async def fill(url: str, total: int, seed: int, batch: int = 100_000) -> Traffic:
    """Put ``total`` requests with their attempts into the ledger at ``url``, then
    ``VACUUM ANALYZE`` it, as a settled ledger would have been."""
    started = time.perf_counter()
    traffic = Traffic(Prompts.load(), seed)
    print(f"{len(traffic.prompts.features):,} real prompts featurized and scored", flush=True)
    connection = await asyncpg.connect(url.replace("postgresql://", "postgres://", 1))
    attempts = 0
    try:
        for requests, calls in traffic.batches(total, batch):
            await connection.copy_records_to_table(
                "requests", records=requests, columns=REQUEST_COLUMNS
            )
            await connection.copy_records_to_table(
                "attempts", records=calls, columns=ATTEMPT_COLUMNS
            )
            attempts += len(calls)
        filled = time.perf_counter()
        await connection.execute("VACUUM ANALYZE requests")
        await connection.execute("VACUUM ANALYZE attempts")
        size = await connection.fetchval(
            "SELECT pg_size_pretty(pg_database_size(current_database()))"
        )
    finally:
        await connection.close()
    print(
        f"filled {total:,} requests and {attempts:,} attempts in {filled - started:.1f} s "
        f"(VACUUM ANALYZE {time.perf_counter() - filled:.1f} s); database {size}",
        flush=True,
    )
    return traffic


if __name__ == "__main__":
    url, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    filled = asyncio.run(fill(url, total, seed))
    print(json.dumps({"logged": filled.logged.figures(), "candidate": filled.candidate.figures()}))
