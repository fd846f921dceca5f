"""A prefix cache like vLLM's: the longest start of a request seen before is not computed again.

A request's tools and its messages before the new turn (the system messages, then the history of
a conversation) are a chain; each leading run of whole messages is remembered, and the longest
run seen before counts as cached, in whole blocks of 16 tokens as vLLM's block-level cache reports
them. So a stable system message followed by one that changes still caches the stable one, and a
conversation whose earlier turns arrive unchanged caches them too.
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
        """Tokens of the request's longest start already cached (never its last message, the new
        turn); then remember its starts, the new turn included, for the conversation's next."""
        chain = hashlib.sha256(json.dumps(tools or [], sort_keys=True, default=str).encode())
        keys = [chain.digest()] if tools else []
        for message in messages:
            chain.update(json.dumps(message, sort_keys=True, default=str).encode())
            keys.append(chain.copy().digest())
        hit = 0  # how many leading keys were seen before; the new turn itself never counts
        while hit < len(keys) - 1 and keys[hit] in self._seen:
            self._seen.move_to_end(keys[hit])
            hit += 1
        for key in keys[hit:]:
            self._seen[key] = None
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        if hit == 0:
            return 0
        seen = messages[: hit - 1] if tools else messages[:hit]
        return estimate_message_tokens(seen, tools) // _BLOCK * _BLOCK
