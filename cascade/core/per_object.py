"""A value computed once per object, for objects that are slow to hash (pydantic models).

Tiers and prices are frozen pydantic models: hashing one walks every field, which cost more per
request than the work being remembered. :class:`PerObject` keys by identity instead and holds the
object, so its ``id`` cannot be reused by another object while the entry lives; a reloaded
policy's new objects simply get entries of their own. Bounded: full, it starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerObject"]

K = TypeVar("K")
V = TypeVar("V")


class PerObject(Generic[K, V]):
    """``build(key)``, computed on the first call for each key object and remembered."""

    def __init__(self, build: Callable[[K], V], *, max_entries: int = 4096) -> None:
        self._build = build
        self._max_entries = max_entries
        self._entries: dict[int, tuple[K, V]] = {}

    def __call__(self, key: K) -> V:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        value = self._build(key)  # may raise: nothing is remembered then
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[id(key)] = (key, value)
        return value
