"""The simulated tiers: what each one serves, how fast, and how well.

Two kinds of timing:

* :class:`GpuTiming` -- a model on one GPU behind a continuous-batching engine (vLLM-like). One
  engine step advances every running sequence by one token and takes::

      T = max((N_total * bytes + sum(L_i) * b) / BW,  (B + P) * 2 * N_active / C)

  the weights are read once per step and shared by the batch, each sequence reads its own KV
  cache (``L_i`` tokens of context, ``b`` bytes per token), and every token computed -- the ``B``
  decoded ones plus the ``P`` prompt tokens prefilled in that step -- costs ``2 * N_active``
  FLOPs. Parameters are the real architectures (Qwen2.5-1.5B / 7B shapes, 4-bit weights, bf16 KV
  cache) on an H100; at the reference context of 3,200 tokens a sequence they give ~32,000 and
  ~14,000 tok/s at batch 64, the measured numbers in DESIGN.md.
* :class:`ApiTiming` -- a frontier API: each stream is independent (the provider's fleet is not
  ours to saturate), with a time to first token and a per-stream token rate drawn per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "H100",
    "PROFILES",
    "REFERENCE_CONTEXT_TOKENS",
    "ApiTiming",
    "GpuTiming",
    "Hardware",
    "Overload",
    "Profile",
    "Quality",
    "decode_throughput",
    "step_seconds",
]

Overload = Literal["queue", "429", "503"]

REFERENCE_CONTEXT_TOKENS = 3_200
"""Context per sequence (prompt + output so far) at which the reference throughputs hold."""


@dataclass(frozen=True, slots=True)
class Hardware:
    """One accelerator's roofline: memory bandwidth (B/s), dense compute (FLOP/s), memory (B)."""

    name: str
    bandwidth: float
    compute: float
    memory: float


H100 = Hardware(name="H100 SXM", bandwidth=3.35e12, compute=989e12, memory=80e9)


@dataclass(frozen=True, slots=True)
class GpuTiming:
    """A model served by a continuous-batching engine on one GPU."""

    total_params: float
    active_params: float
    bytes_per_param: float
    kv_bytes_per_token: float
    hardware: Hardware = H100
    kv_memory_share: float = 0.9  # vLLM's default gpu_memory_utilization

    @property
    def weight_bytes(self) -> float:
        """Bytes read per step for the weights."""
        return self.total_params * self.bytes_per_param

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache that fit beside the weights."""
        free = self.hardware.memory * self.kv_memory_share - self.weight_bytes
        return int(free / self.kv_bytes_per_token)


@dataclass(frozen=True, slots=True)
class ApiTiming:
    """A remote API: per-stream time to first token and token rate, ranges drawn per prompt."""

    ttft_seconds: tuple[float, float] = (0.3, 0.6)
    tokens_per_second: tuple[float, float] = (50.0, 100.0)


@dataclass(frozen=True, slots=True)
class Quality:
    """How well a profile answers; rates are shares of prompts, deterministic per prompt.

    ``score`` names the labeled-data column the profile follows; ``extra_fail_share`` makes it a
    weaker model beside that column's: right on ``1 - extra_fail_share`` as many prompts, mostly
    but not only where the column is right, at the dependence measured between two cheap models
    (:mod:`cascade.simulator.labels`; a distilled 1.5B is weaker than the 7B-class model the
    data measured).
    """

    score: Literal["weak_score", "strong_score"]
    extra_fail_share: float = 0.0
    malformed_tool_call_rate: float = 0.0
    invalid_json_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Profile:
    """A simulated tier: its name, served model names, timing, quality and capacity defaults."""

    name: str
    models: tuple[str, ...]
    timing: GpuTiming | ApiTiming
    quality: Quality
    max_concurrency: int
    overload: Overload


def step_seconds(timing: GpuTiming, batch: int, context_tokens: int, prefill_tokens: int) -> float:
    """Seconds of one engine step over ``batch`` sequences holding ``context_tokens`` in all."""
    hw = timing.hardware
    memory = (timing.weight_bytes + context_tokens * timing.kv_bytes_per_token) / hw.bandwidth
    compute = (batch + prefill_tokens) * 2 * timing.active_params / hw.compute
    return max(memory, compute)


def decode_throughput(
    timing: GpuTiming, batch: int, context_per_sequence: int = REFERENCE_CONTEXT_TOKENS
) -> float:
    """Output tokens per second of a steady decode at ``batch`` sequences of the given context."""
    return batch / step_seconds(timing, batch, batch * context_per_sequence, 0)


# Qwen2.5 shapes: 28 layers; 2 (1.5B) or 4 (7B) KV heads of dim 128; K and V in bf16.
_KV_1_5B = 2 * 28 * 2 * 128 * 2
_KV_7B = 2 * 28 * 4 * 128 * 2

PROFILES: dict[str, Profile] = {
    "1.5b": Profile(
        name="1.5b",
        models=("distill-1.5b",),
        timing=GpuTiming(
            total_params=1.54e9,
            active_params=1.54e9,
            bytes_per_param=0.5,
            kv_bytes_per_token=_KV_1_5B,
        ),
        # A 1.5B distillate is ~80% as accurate as the 7B-class model: ~0.53 on the data.
        quality=Quality(
            score="weak_score",
            extra_fail_share=0.2,
            malformed_tool_call_rate=0.12,
            invalid_json_rate=0.10,
        ),
        max_concurrency=64,
        overload="queue",
    ),
    "7b": Profile(
        name="7b",
        models=("distill-7b",),
        timing=GpuTiming(
            total_params=7.6e9,
            active_params=7.6e9,
            bytes_per_param=0.5,
            kv_bytes_per_token=_KV_7B,
        ),
        quality=Quality(score="weak_score", malformed_tool_call_rate=0.05, invalid_json_rate=0.04),
        max_concurrency=64,
        overload="queue",
    ),
    "frontier": Profile(
        name="frontier",
        # OpenAI's names and Anthropic's: both routes answer to all four
        models=("gpt-4o", "openai/gpt-4o", "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        timing=ApiTiming(),
        quality=Quality(score="strong_score"),
        # Providers rate-limit rather than queue: over the limit is a 429 with Retry-After.
        max_concurrency=512,
        overload="429",
    ),
}
