"""Which replica of a self-hosted tier takes a call: prefix affinity by rendezvous hashing with a
bound on load, round-robin, least-loaded, and replicas that fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.tiers.engines import EngineLoads, EngineSample
from cascade.tiers.replicas import LOAD_BOUND, Replicas, rendezvous

URLS = [f"http://engine-{n}.internal:8000/v1" for n in range(5)]
PREFIXES = [f"{n:016x}" for n in range(2000)]


def _tier(urls: list[str] = URLS, **fields: Any) -> Tier:
    return Tier(
        name="medium",
        model="m",
        kind="self_hosted",
        replicas=urls,
        price={"gpu_usd_per_hour": 2.3, "tokens_per_second": 14500},
        **fields,
    )


class _Clock:
    """A clock the test moves (cool-downs are minutes; no test waits them out)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _chosen(replicas: Replicas, tier: Tier, prefix: str | None) -> str:
    return replicas.order(tier, prefix)[0]


_CHOOSE = """
import json, sys
from cascade.policy.model import Tier
from cascade.tiers.replicas import Replicas
urls, prefixes = json.loads(sys.stdin.read())
tier = Tier(name="medium", model="m", kind="self_hosted", replicas=urls,
            price={"gpu_usd_per_hour": 2.3, "tokens_per_second": 14500})
print(json.dumps([Replicas().order(tier, p)[0] for p in prefixes]))
"""


def test_two_proxies_that_never_talk_choose_the_same_replica() -> None:
    """Two processes with different hash seeds send every prefix to the same replica."""
    prefixes = PREFIXES[:300]
    chosen = []
    for seed in ("1", "2"):
        run = subprocess.run(
            [sys.executable, "-c", _CHOOSE],
            input=json.dumps([URLS, prefixes]),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        chosen.append(json.loads(run.stdout))
    assert chosen[0] == chosen[1]
    assert chosen[0] == [_chosen(Replicas(), _tier(), p) for p in prefixes]
    assert len(set(chosen[0])) == len(URLS)  # and the prefixes spread over every replica


def test_the_same_prefix_stays_on_its_replica_while_loads_are_even() -> None:
    """Repeated calls of one prefix go to one replica; many prefixes spread about evenly."""
    replicas, tier = Replicas(), _tier()
    for prefix in PREFIXES[:20]:
        assert len({_chosen(replicas, tier, prefix) for _ in range(5)}) == 1
    shares = Counter(_chosen(replicas, tier, p) for p in PREFIXES)
    assert set(shares) == set(URLS)
    assert all(abs(count / len(PREFIXES) - 1 / len(URLS)) < 0.05 for count in shares.values())


def test_removing_a_replica_moves_only_its_own_prefixes() -> None:
    """Only the prefixes the removed replica served move (about 1/N); the rest stay put."""
    before = {p: rendezvous(p, URLS)[0] for p in PREFIXES}
    gone = URLS[2]
    after = {p: rendezvous(p, [u for u in URLS if u != gone])[0] for p in PREFIXES}
    moved = [p for p in PREFIXES if before[p] != after[p]]
    assert all(before[p] == gone for p in moved)
    assert len(moved) == sum(1 for url in before.values() if url == gone)
    assert 0.15 < len(moved) / len(PREFIXES) < 0.25


def test_adding_a_replica_takes_about_one_nth_of_the_prefixes() -> None:
    """A new replica takes about 1/(N+1) of the prefixes, each from wherever it was."""
    new = "http://engine-new.internal:8000/v1"
    before = {p: rendezvous(p, URLS)[0] for p in PREFIXES}
    after = {p: rendezvous(p, [*URLS, new])[0] for p in PREFIXES}
    moved = [p for p in PREFIXES if before[p] != after[p]]
    assert all(after[p] == new for p in moved)
    assert 0.12 < len(moved) / len(PREFIXES) < 0.22


def test_a_hot_prefix_spreads_once_its_replica_is_over_the_bound() -> None:
    """A prefix's replica keeps its calls up to the bound on load, then the prefix's next
    replica in rendezvous order takes them, and the next after that."""
    replicas, tier = Replicas(), _tier(URLS[:4])
    hot = PREFIXES[0]
    ranked = rendezvous(hot, URLS[:4])
    for _ in range(40):  # 40 calls of one prefix in flight at once
        replicas.started(tier, _chosen(replicas, tier, hot))
    loads = [replicas.in_flight(tier, url) for url in ranked]
    assert sum(loads) == 40
    assert loads[0] < 40  # the hot prefix did not land all on one replica
    assert loads[0] >= loads[1] >= loads[2] >= loads[3]  # spilled in rendezvous order
    assert max(loads) <= LOAD_BOUND * 40 / 4 + 1


def test_under_the_bound_the_prefix_keeps_its_replica() -> None:
    """A replica somewhat busier than the rest still takes its prefix while under the bound."""
    replicas, tier = Replicas(), _tier(URLS[:4])
    hot = PREFIXES[0]
    top, second = rendezvous(hot, URLS[:4])[:2]
    for url in URLS[:4]:
        for _ in range(8):
            replicas.started(tier, url)
    replicas.started(tier, top)  # 9 against 8, 8, 8: bound ceil(1.25 * 34 / 4) = 11
    assert _chosen(replicas, tier, hot) == top
    for _ in range(3):
        replicas.started(tier, top)  # 12 against 8, 8, 8: at the bound, ceil(1.25 * 37 / 4)
    assert _chosen(replicas, tier, hot) == second
    replicas.ended(tier, top)
    assert _chosen(replicas, tier, hot) == top


def test_round_robin_takes_the_replicas_in_turn() -> None:
    """round_robin cycles through the replicas whatever the prefix."""
    replicas, tier = Replicas(), _tier(URLS[:3], routing="round_robin")
    chosen = [_chosen(replicas, tier, PREFIXES[0]) for _ in range(6)]
    assert chosen == URLS[:3] * 2


def test_least_loaded_takes_the_idlest_replica() -> None:
    """least_loaded picks the replica with the fewest calls, ties in turn."""
    replicas, tier = Replicas(), _tier(URLS[:3], routing="least_loaded")
    replicas.started(tier, URLS[0])
    replicas.started(tier, URLS[0])
    replicas.started(tier, URLS[1])
    assert _chosen(replicas, tier, PREFIXES[0]) == URLS[2]
    replicas.started(tier, URLS[2])  # 2, 1, 1: the two idlest alternate
    assert {_chosen(replicas, tier, None) for _ in range(4)} == {URLS[1], URLS[2]}


def test_a_request_without_a_stable_prefix_goes_to_the_least_loaded() -> None:
    """Under prefix routing, a request with no stable prefix is not pinned anywhere."""
    replicas, tier = Replicas(), _tier(URLS[:3])
    replicas.started(tier, URLS[0])
    replicas.started(tier, URLS[2])
    assert _chosen(replicas, tier, None) == URLS[1]


def test_engine_load_counts_every_proxys_calls() -> None:
    """With engine metrics, a replica whose engine reports a long queue is avoided even though
    this proxy sends it nothing; a replica whose engine refuses requests is left out."""
    engines = EngineLoads()
    tier = _tier(URLS[:3], routing="least_loaded", engine={"metrics": "vllm", "max_waiting": 10})
    engines.watch([tier])
    engines.record(tier.name, URLS[0], EngineSample(running=30, waiting=0, kv_usage=0.2))
    engines.record(tier.name, URLS[1], EngineSample(running=2, waiting=0, kv_usage=0.1))
    engines.record(tier.name, URLS[2], EngineSample(running=64, waiting=12, kv_usage=0.9))
    replicas = Replicas(engines)
    assert replicas.load(tier, URLS[0]) == 30
    assert replicas.order(tier, None) == [URLS[1], URLS[0]]  # URLS[2] is saturated: left out


def test_a_dead_replica_is_skipped_for_its_cooldown() -> None:
    """An unreachable replica takes no call until its cool-down ends; the others serve."""
    clock = _Clock()
    replicas, tier = Replicas(clock=clock), _tier(URLS[:3], cooldown_s=30)
    prefix = next(p for p in PREFIXES if rendezvous(p, URLS[:3])[0] == URLS[0])
    replicas.unreachable(tier, URLS[0])
    assert replicas.order(tier, prefix) == rendezvous(prefix, URLS[:3])[1:]
    clock.now += 31
    assert _chosen(replicas, tier, prefix) == URLS[0]


def test_when_every_replica_cools_down_all_are_tried() -> None:
    """A tier whose replicas all failed is tried anyway, as a lone endpoint would be."""
    replicas, tier = Replicas(clock=_Clock()), _tier(URLS[:2])
    for url in URLS[:2]:
        replicas.unreachable(tier, url)
    assert sorted(replicas.order(tier, PREFIXES[0])) == URLS[:2]


def test_failures_and_retry_after_count_per_replica() -> None:
    """max_failures failed calls in a row, or a Retry-After, skip one replica; the tier need not
    wait while another replica is available; a client's mistake counts against none."""
    clock = _Clock()
    replicas, tier = Replicas(clock=clock), _tier(URLS[:2], max_failures=2, cooldown_s=10)
    broken = TierError(tier.name, "server_error", "boom", 500)
    assert replicas.failed(tier, URLS[0], broken)
    assert replicas.available(tier, URLS[0])
    assert replicas.failed(tier, URLS[0], broken)
    assert not replicas.available(tier, URLS[0])
    busy = TierError(tier.name, "rate_limited", "busy", 429, retry_after_s=5)
    assert not replicas.failed(tier, URLS[1], busy)  # the last one available: the tier waits
    assert not replicas.available(tier, URLS[1])
    clock.now += 6
    assert replicas.available(tier, URLS[1])
    wrong = TierError(tier.name, "client_error", "bad request", 400)
    for _ in range(5):
        replicas.failed(tier, URLS[1], wrong)
    assert replicas.available(tier, URLS[1])


@pytest.mark.parametrize("routing", ["prefix", "round_robin", "least_loaded"])
def test_a_lone_endpoint_is_always_chosen(routing: str) -> None:
    """A tier with one endpoint calls it, whatever the routing."""
    tier = Tier(
        name="small",
        model="m",
        kind="self_hosted",
        endpoint="http://127.0.0.1:9/v1",
        routing=routing,
        price={"gpu_usd_per_hour": 2.3, "tokens_per_second": 32000},
    )
    assert Replicas().order(tier, PREFIXES[0]) == ["http://127.0.0.1:9/v1"]
