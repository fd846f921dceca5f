"""A prefix cache like vLLM's: a stable prefix seen before is not computed again.

The stable prefix of a request is its tools and its leading system (or developer) messages --
the part a cache-friendly prompt puts first. Its tokens count as cached once the same prefix has
been seen, in whole blocks of 16 tokens as vLLM's block-level cache reports them.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from cascade.core.tokens import estimate_message_tokens

__all__ = ["PrefixCache"]

_BLOCK = 16


class PrefixCache:
    """The hashes of recently seen prefixes, least recently used evicted first."""

    def __init__(self, capacity: int = 4096) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def cached_tokens(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
    ) -> int:
        """Tokens of the request's stable prefix already cached; then remember the prefix."""
        prefix: list[Mapping[str, Any]] = []
        for message in messages[:-1]:  # the last message is the new turn, never the prefix
            if message.get("role") not in ("system", "developer"):
                break
            prefix.append(message)
        if not prefix and not tools:
            return 0
        blob = json.dumps([prefix, tools or []], sort_keys=True, default=str).encode()
        key = hashlib.sha256(blob).digest()
        if key in self._seen:
            self._seen.move_to_end(key)
            return estimate_message_tokens(prefix, tools) // _BLOCK * _BLOCK
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return 0
