"""Request ids: ``req_`` and 24 random hex digits, unguessable."""

from __future__ import annotations

import os
import threading


def new_request_id() -> str:
    """A fresh request id (``req_`` + 24 random hex digits)."""
    return "req_" + _randomness.take(12).hex()


class _RandomBytes:
    """os.urandom bought in bulk: one system call per 256 request ids (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._bytes = b""
        self._at = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._at + count > len(self._bytes):
                self._bytes, self._at = os.urandom(self._size), 0
            source, start = self._bytes, self._at
            self._at += count
        return source[start : start + count]


_randomness = _RandomBytes(12 * 256)
