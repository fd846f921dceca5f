"""Prompt caching as Anthropic does it: only what the request marks is cached.

A prompt is a sequence of blocks -- tools, then system blocks, then each message's content
blocks -- and a block carrying ``cache_control: {"type": "ephemeral", "ttl": "5m" | "1h"}`` is a
*breakpoint*. The cache key of a position is the hash of the model and every block up to it.

On each request (:meth:`MarkerCache.plan`, then :meth:`MarkerCache.commit` once the request is
admitted):

* every breakpoint looks for a live entry at its own position and at each block boundary up to
  :data:`LOOKBACK_BLOCKS` before it (Anthropic's lookback); the longest hit is read
  (``cache_read_input_tokens``) and its expiry is refreshed;
* the tokens after the hit up to the last breakpoint are written (``cache_creation_input_tokens``,
  split by the ttl of the breakpoint that covers them), and every breakpoint's prefix is stored
  until now + its ttl;
* a prefix shorter than the model's minimum cacheable length (:func:`minimum_tokens`) is neither
  written nor read, without an error, as Anthropic does;
* the rest is ``input_tokens``. A request without breakpoints is not cached at all.

Marker errors are the request's (400): more than :data:`MAX_BREAKPOINTS` breakpoints, or a 1h
breakpoint after a 5m one. Time is the simulator's clock (simulated seconds), so a small
``time_scale`` runs hours of cache expiry in seconds. Entries are bounded; the least recently
used goes first.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Literal

from cascade.simulator.wire import BadRequest

__all__ = [
    "LOOKBACK_BLOCKS",
    "MAX_BREAKPOINTS",
    "TTL_SECONDS",
    "Block",
    "CachePlan",
    "CacheStats",
    "InvalidMarkers",
    "MarkerCache",
    "Ttl",
    "minimum_tokens",
]

Ttl = Literal["5m", "1h"]

MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
TTL_SECONDS: dict[Ttl, float] = {"5m": 300.0, "1h": 3600.0}

# Minimum cacheable prompt length by model (Anthropic's prompt-caching page); first match wins.
_MINIMUMS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"opus-4-[56]|haiku-4-5"), 4096),
    (re.compile(r"haiku-3|3-haiku|3-5-haiku|sonnet-4-6"), 2048),
)
_DEFAULT_MINIMUM = 1024  # Sonnet and Opus up to 4.1 (claude-sonnet-4-5 included)


def minimum_tokens(model: str) -> int:
    """The shortest prefix ``model`` caches, in tokens."""
    return next((n for pattern, n in _MINIMUMS if pattern.search(model)), _DEFAULT_MINIMUM)


class InvalidMarkers(BadRequest):
    """The request's ``cache_control`` markers break Anthropic's rules (a 400)."""


@dataclass(frozen=True, slots=True)
class Block:
    """One block of a prompt: its canonical bytes, its tokens, and its marker's ttl if any."""

    content: bytes
    tokens: int
    ttl: Ttl | None = None


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What a request reads and writes; nothing is stored until :meth:`MarkerCache.commit`."""

    prompt_tokens: int
    read: int = 0
    written_5m: int = 0
    written_1h: int = 0
    hit: bytes | None = None
    stores: tuple[tuple[bytes, float], ...] = ()  # (key, ttl seconds) for each breakpoint

    @property
    def written(self) -> int:
        """Tokens written to the cache, both ttls."""
        return self.written_5m + self.written_1h

    @property
    def input_tokens(self) -> int:
        """Tokens neither read nor written: Anthropic's ``input_tokens``."""
        return self.prompt_tokens - self.read - self.written


@dataclass
class CacheStats:
    """Counters that ``/metrics`` exports."""

    read_tokens: int = 0
    creation_tokens: int = 0
    entries: int = 0


@dataclass(slots=True)
class _Entry:
    expires: float
    ttl: float


@dataclass
class MarkerCache:
    """Live prefixes by key, least recently used first."""

    capacity: int = 65_536
    stats: CacheStats = field(default_factory=CacheStats)
    _entries: OrderedDict[bytes, _Entry] = field(default_factory=OrderedDict)

    def plan(self, model: str, blocks: Sequence[Block], now: float) -> CachePlan:
        """What ``blocks`` would read and write at simulated time ``now``; raises
        :class:`InvalidMarkers` when the markers break the rules."""
        total = sum(b.tokens for b in blocks)
        marks = [i for i, b in enumerate(blocks) if b.ttl is not None]
        if not marks:
            return CachePlan(total)
        _check(blocks, marks)
        ends = list(accumulate(b.tokens for b in blocks))  # tokens up to and including block i
        keys = _keys(model, blocks)
        least = minimum_tokens(model)
        hit = max((self._longest_hit(keys, ends, m, least, now) for m in marks), default=-1)
        read = ends[hit] if hit >= 0 else 0
        written: dict[Ttl, int] = {"5m": 0, "1h": 0}
        covered = read
        stores = []
        for m in marks:
            if ends[m] < least:
                continue
            ttl: Ttl = blocks[m].ttl or "5m"
            written[ttl] += max(0, ends[m] - covered)
            covered = max(covered, ends[m])
            stores.append((keys[m], TTL_SECONDS[ttl]))
        return CachePlan(
            total,
            read,
            written["5m"],
            written["1h"],
            keys[hit] if hit >= 0 else None,
            tuple(stores),
        )

    def commit(self, plan: CachePlan, now: float) -> None:
        """Refresh the hit and store every breakpoint's prefix (an admitted request)."""
        if plan.hit is not None and (entry := self._entries.get(plan.hit)) is not None:
            entry.expires = max(entry.expires, now + entry.ttl)
            self._entries.move_to_end(plan.hit)
        for key, ttl in plan.stores:
            entry = self._entries.pop(key, None)
            if entry is None or entry.expires < now + ttl:  # a longer-lived entry is kept
                entry = _Entry(now + ttl, ttl)
            self._entries[key] = entry
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        self.stats.read_tokens += plan.read
        self.stats.creation_tokens += plan.written
        self.stats.entries = len(self._entries)

    def _longest_hit(
        self, keys: Sequence[bytes], ends: Sequence[int], mark: int, least: int, now: float
    ) -> int:
        """The last block of the longest live prefix at ``mark`` or up to the lookback before
        it; -1 when none."""
        for i in range(mark, max(-1, mark - LOOKBACK_BLOCKS - 1), -1):
            if ends[i] < least:
                return -1
            entry = self._entries.get(keys[i])
            if entry is None:
                continue
            if entry.expires > now:
                return i
            del self._entries[keys[i]]
            self.stats.entries = len(self._entries)
        return -1


def _check(blocks: Sequence[Block], marks: Sequence[int]) -> None:
    if len(marks) > MAX_BREAKPOINTS:
        raise InvalidMarkers(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(marks)}."
        )
    ttls = [blocks[m].ttl for m in marks]
    for earlier, later in pairwise(ttls):
        if earlier == "5m" and later == "1h":
            raise InvalidMarkers(
                "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control "
                "block. Note that blocks are processed in the following order: `tools`, "
                "`system`, `messages`."
            )


def _keys(model: str, blocks: Sequence[Block]) -> list[bytes]:
    """The key of every position: the hash of the model and the blocks up to it."""
    chain = hashlib.blake2b(model.encode(), digest_size=16)
    keys = []
    for block in blocks:
        chain.update(len(block.content).to_bytes(8, "big"))
        chain.update(block.content)
        keys.append(chain.copy().digest())
    return keys
