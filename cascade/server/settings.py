"""The proxy's settings: built by the CLI (or a test) and handed to ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    """What one proxy process serves, and its limits."""

    policies: tuple[str | Path, ...] = ("default",)
    """Policy files or shipped policy names; the first is used for the model name ``cascade``."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    api_keys: frozenset[str] = field(default_factory=frozenset)
    """Bearer tokens clients must send; empty means no authentication (a sidecar on loopback)."""
    reload_interval_s: float = 1.0
    """How often policy files are checked for changes (0 disables reloading)."""
    batch_wait_ms: float = 2.0
    """How long the scorer waits to fill a micro-batch."""
