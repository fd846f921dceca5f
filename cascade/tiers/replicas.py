"""Which engine replica of a self-hosted tier takes a call (the tier's ``routing``).

``prefix`` (the default) sends requests whose stable prefix is the same to the same replica, so
that replica's prefix cache holds it and the prompt is not computed again. The replica is found
by rendezvous (highest-random-weight) hashing: each replica's weight for a prefix is a blake2b
hash of (prefix hash, replica URL), and the heaviest wins. Nothing in it depends on the process,
so two proxies that never talk choose alike; and a replica added or removed moves only the
prefixes it wins or won (about 1/N of them), not the rest.

A hot prefix must not melt its replica: the choice is bounded by load (consistent hashing with
bounded loads, Mirrokni, Thorup and Zadimoghaddam, 2018). No replica takes a call while its load
is already at ``ceil(LOAD_BOUND * (total + 1) / n)`` (the mean load of the ``n`` replicas with
this call counted, times 1.25); the call goes to the next replica in the prefix's rendezvous
order that is under it, and that order is also the same in every proxy. Some replica is always
under the bound.

``round_robin`` takes the replicas in turn; ``least_loaded`` takes the one with the least load,
ties in turn. Requests without a stable prefix (no system message and no tools) are routed as
``least_loaded`` under ``prefix``.

A replica's load is what its engine reports running and waiting (:mod:`cascade.tiers.engines`,
when the tier reads engine metrics and the last read is fresh), counting every proxy's calls, or
this proxy's own calls in flight to it, whichever is higher (a fresh burst shows in our count
before the next read). A replica is left out while it cools down (below) or while its engine
refuses requests (saturated, or unreachable under ``on_unreachable: skip``); when every replica
is left out, all are tried, as a lone endpoint is.

Health per replica: a replica that cannot be reached (connection refused, connect timeout: the
request never left) is skipped for the tier's ``cooldown_s`` at once, and the call moves on to
the next replica; one that fails ``max_failures`` calls in a row (5xx, timeouts, answers that are
not OpenAI's) is skipped as long; one that answers 429 or 503 with ``Retry-After`` is skipped for
that long. A tier is therefore down only when all its replicas are.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cascade.errors import TierError
from cascade.policy.model import Tier
from cascade.tiers.engines import EngineLoads

__all__ = ["LOAD_BOUND", "Replicas", "rendezvous"]

LOAD_BOUND = 1.25
"""How far above the mean load (this call counted) a replica's load may be before a prefix's
call goes to its next replica: ε = 0.25. Lower spreads hot prefixes sooner (fewer cache hits),
higher lets one replica take more (longer queues there)."""


def _weight(key: bytes, url: str) -> bytes:
    return hashlib.blake2b(key + b"\0" + url.encode(), digest_size=8).digest()


def rendezvous(key: str, urls: Sequence[str]) -> list[str]:
    """``urls`` from the heaviest to the lightest for ``key``: the same in every process."""
    encoded = key.encode()
    return sorted(urls, key=lambda url: _weight(encoded, url), reverse=True)


@dataclass
class _Replica:
    """What this process knows of one replica: its calls in flight and its failures."""

    in_flight: int = 0
    failures: int = 0
    skipped_until: float = 0.0


@dataclass
class Replicas:
    """This process's view of every self-hosted tier's replicas, and the choice per call.

    ``engines``: the engines' own load (None: this proxy's calls in flight alone).
    """

    engines: EngineLoads | None = None
    clock: Callable[[], float] = time.monotonic
    _state: dict[tuple[str, str], _Replica] = field(default_factory=dict)
    _turns: dict[str, int] = field(default_factory=dict)

    def order(self, tier: Tier, affinity: str | None) -> list[str]:
        """The replicas to try for one call, the chosen one first, then where the call goes if
        that one cannot be reached. ``affinity``: the request's prefix hash (None: it has no
        stable prefix)."""
        urls = self._usable(tier)
        if len(urls) <= 1:
            return urls
        loads = {url: self.load(tier, url) for url in urls}
        if tier.routing == "prefix" and affinity is not None:
            ranked = rendezvous(affinity, urls)
            bound = math.ceil(LOAD_BOUND * (sum(loads.values()) + 1) / len(urls))
            chosen = next(url for url in ranked if loads[url] < bound)
            return [chosen, *(url for url in ranked if url != chosen)]
        turn = self._turns.get(tier.name, 0)
        self._turns[tier.name] = turn + 1
        rotated = urls[turn % len(urls) :] + urls[: turn % len(urls)]
        if tier.routing == "round_robin":
            return rotated
        return sorted(rotated, key=loads.__getitem__)  # stable: ties stay in turn

    def load(self, tier: Tier, url: str) -> float:
        """``url``'s load: its engine's running and waiting requests when freshly read, or this
        proxy's calls in flight there, whichever is higher."""
        own = self._of(tier, url).in_flight
        seen = self.engines.replica(tier.name, url) if self.engines is not None else None
        if seen is None or not seen.reachable:
            return own
        return max(own, seen.running + seen.waiting)

    def _usable(self, tier: Tier) -> list[str]:
        """The tier's replicas that neither cool down nor are refused by their engine (all of
        them when none is left)."""
        urls = list(tier.endpoints)
        now = self.clock()
        engines = self.engines
        kept = [
            url
            for url in urls
            if now >= self._of(tier, url).skipped_until
            and (engines is None or engines.admits(tier, url))
        ]
        return kept or urls

    def _of(self, tier: Tier, url: str) -> _Replica:
        state = self._state.get((tier.name, url))
        if state is None:
            state = self._state[tier.name, url] = _Replica()
        return state

    def started(self, tier: Tier, url: str) -> None:
        """A call to ``url`` began (give it back with :meth:`ended`)."""
        self._of(tier, url).in_flight += 1

    def ended(self, tier: Tier, url: str) -> None:
        self._of(tier, url).in_flight -= 1

    def in_flight(self, tier: Tier, url: str) -> int:
        """This proxy's calls to ``url`` now."""
        return self._of(tier, url).in_flight

    def available(self, tier: Tier, url: str) -> bool:
        """False while ``url`` cools down after failing."""
        return self.clock() >= self._of(tier, url).skipped_until

    def succeeded(self, tier: Tier, url: str) -> None:
        self._of(tier, url).failures = 0

    def unreachable(self, tier: Tier, url: str) -> None:
        """``url`` could not be reached: skip it for the tier's cool-down."""
        self._skip(self._of(tier, url), tier.cooldown_s)

    def failed(self, tier: Tier, url: str, error: TierError) -> bool:
        """Count ``error`` against ``url`` when it is the replica's fault (as
        :class:`~cascade.run.health.TierHealth` counts a tier's); True when another replica of
        the tier is still available, so the tier itself need not wait out a ``Retry-After``."""
        if not error.spillable or error.kind == "saturated":
            return False
        state = self._of(tier, url)
        if error.retry_after_s is not None and error.retry_after_s > 0:
            self._skip(state, error.retry_after_s)
        state.failures += 1
        if state.failures >= tier.max_failures:
            self._skip(state, tier.cooldown_s)
            state.failures = 0
        return any(self.available(tier, other) for other in tier.endpoints if other != url)

    def _skip(self, state: _Replica, seconds: float) -> None:
        state.skipped_until = max(state.skipped_until, self.clock() + seconds)
