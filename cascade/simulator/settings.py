"""Settings of a simulated tier, checked when built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cascade.errors import CascadeError
from cascade.simulator.dataset import DATA_FILE
from cascade.simulator.metrics import MetricNames
from cascade.simulator.profiles import PROFILES, Overload, Profile

__all__ = ["SimulatorSettings"]

_OVERLOADS = ("queue", "429", "503")


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """What to simulate and how fast.

    ``time_scale`` is wall seconds per simulated second: 0.01 runs a hundred times faster than
    real time; the latencies and token counts the server reports stay in simulated (real-world)
    units. ``max_concurrency`` (sequences in the running batch) and ``overload`` (what happens
    beyond it: wait in a queue, or be refused with 429 or 503 -- 529 on ``/v1/messages``, as
    Anthropic does) default to the profile's; so do the served ``models``. ``metrics_names``:
    whose names ``/metrics`` uses, vLLM's or SGLang's.
    """

    profile: str = "1.5b"
    time_scale: float = 1.0
    max_concurrency: int | None = None
    overload: Overload | None = None
    models: tuple[str, ...] = ()
    data_file: Path = DATA_FILE
    max_body_bytes: int = 4 * 1024 * 1024
    metrics_names: MetricNames = "vllm"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            allowed = ", ".join(PROFILES)
            raise CascadeError(f"profile {self.profile!r}: unknown; allowed: {allowed}")
        if not self.time_scale > 0:
            raise CascadeError(f"time_scale {self.time_scale}: must be greater than 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise CascadeError(f"max_concurrency {self.max_concurrency}: must be at least 1")
        if self.overload is not None and self.overload not in _OVERLOADS:
            raise CascadeError(f"overload {self.overload!r}: allowed: queue, 429, 503")
        if self.metrics_names not in ("vllm", "sglang"):
            raise CascadeError(f"metrics_names {self.metrics_names!r}: allowed: vllm, sglang")

    @property
    def spec(self) -> Profile:
        """The profile, with this server's concurrency, overload and model names applied."""
        base = PROFILES[self.profile]
        return Profile(
            name=base.name,
            models=self.models or base.models,
            timing=base.timing,
            quality=base.quality,
            max_concurrency=self.max_concurrency or base.max_concurrency,
            overload=self.overload or base.overload,
        )
