"""What a self-hosted fleet costs: its bill against the work it did, as exact decimals.

The ledger charges each call on a self-hosted tier at the tier's full-batch price (GPU $/hour ÷
measured throughput, :mod:`cascade.core.pricing`): the *nominal* cost, a floor. The bill is
different: every billed GPU costs its rent each hour, busy or idle, plus a fixed operations
cost. Over a window of ``hours``:

- billed = gpus x gpu $/hour x hours + ops $/month x hours ÷ 720 (a month counts 30 days);
- busy GPU-hours = (prompt - cached) ÷ prefill tokens/s + completion ÷ decode tokens/s, ÷ 3600
  at the full batch (prompt tokens found in the engine's prefix cache take no GPU time, as the
  ledger prices them);
- nominal = busy GPU-hours x gpu $/hour (what the ledger's per-call prices add up to); given
  the ledger's charge instead, busy GPU-hours = charge ÷ gpu $/hour: the GPU time each call was
  priced at, at the batch it was served at (smaller for a workload's ``max_tpot_ms``);
- utilization = busy GPU-hours ÷ (gpus x hours): the share of the billed GPU time that served
  traffic;
- capacity = gpus x decode tokens/s x 3600 x hours: output tokens the fleet could decode at its
  full batch (``tokens_per_second``) in the window;
- effective $/M tokens = billed ÷ served tokens x 10⁶, served = prompt (cached included) +
  completion; nominal $/M tokens likewise from the nominal cost. Without operations cost,
  effective ÷ nominal = 1 ÷ utilization: a fleet idle half the time costs twice the nominal.

The break-even of a fleet against an API: the tokens a day at which the fleet's daily bill equals
what the same traffic (its mix of prompt, cached and completion tokens) would cost at the API's
rates; above it, self-hosting is cheaper, provided the fleet can serve that much.

Pure: no I/O. ``cascade report`` (:mod:`cascade.ledger.fleet_report`) and ``cascade plan`` use
these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cascade.core.pricing import DEFAULT_PREFILL_SPEEDUP, Rates
from cascade.policy.model import GpuPrice, Tier

__all__ = [
    "HOURS_PER_MONTH",
    "BreakEven",
    "Fleet",
    "FleetCost",
    "Served",
    "billed_usd",
    "break_even",
    "busy_gpu_hours",
    "capacity_tokens",
    "fleet_cost",
    "fleet_of",
    "nominal_usd",
]

HOURS_PER_MONTH = Decimal(720)
"""Hours in the month that prorates ``ops_usd_per_month`` (30 days)."""
_SECONDS_PER_HOUR = Decimal(3600)
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Fleet:
    """What a self-hosted tier is billed for and what it can do per billed GPU."""

    gpus: int
    gpu_usd_per_hour: Decimal
    """Rent of one billed GPU per hour."""
    tokens_per_second: Decimal
    """Decode throughput of one billed GPU at the full batch (output tokens/s)."""
    prefill_tokens_per_second: Decimal
    """Prompt-processing throughput of one billed GPU."""
    ops_usd_per_month: Decimal = _ZERO
    """Fixed operations cost per (30-day) month."""

    @classmethod
    def of(cls, price: GpuPrice, gpus: int) -> Fleet:
        """A fleet of ``gpus`` GPUs at ``price`` (its ``gpus`` field, if set, is not read here)."""
        decode = Decimal(repr(price.tokens_per_second))
        prefill = (
            Decimal(repr(price.prefill_tokens_per_second))
            if price.prefill_tokens_per_second is not None
            else decode * DEFAULT_PREFILL_SPEEDUP
        )
        return cls(gpus, price.gpu_usd_per_hour, decode, prefill, price.ops_usd_per_month)


def fleet_of(tier: Tier) -> Fleet | None:
    """The tier's billed fleet: its ``price.gpus`` (default one per replica) at its GPU price;
    None for a tier not priced by GPU time (an API tier, or self-hosted at a token price)."""
    price = tier.price
    if not isinstance(price, GpuPrice):
        return None
    gpus = price.gpus if price.gpus is not None else max(1, len(tier.endpoints))
    return Fleet.of(price, gpus)


@dataclass(frozen=True, slots=True)
class Served:
    """Tokens a fleet served over a window (every call, whatever its role or outcome)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Of ``prompt_tokens``, those found in the engine's prefix cache (no GPU time)."""

    @property
    def tokens(self) -> int:
        """Prompt (cached included) + completion tokens."""
        return self.prompt_tokens + self.completion_tokens


def billed_usd(fleet: Fleet, hours: Decimal) -> Decimal:
    """What the fleet is billed over ``hours``: GPU rent plus the prorated operations cost."""
    rent = fleet.gpus * fleet.gpu_usd_per_hour * hours
    return rent + fleet.ops_usd_per_month * hours / HOURS_PER_MONTH


def capacity_tokens(fleet: Fleet, hours: Decimal) -> Decimal:
    """Output tokens the fleet can decode at its full batch over ``hours``."""
    return fleet.gpus * fleet.tokens_per_second * _SECONDS_PER_HOUR * hours


def busy_gpu_hours(fleet: Fleet, served: Served) -> Decimal:
    """GPU-hours the served tokens took at full batch (cached prompt tokens take none)."""
    prefill = Decimal(served.prompt_tokens - served.cached_tokens) / fleet.prefill_tokens_per_second
    decode = Decimal(served.completion_tokens) / fleet.tokens_per_second
    return (prefill + decode) / _SECONDS_PER_HOUR


def nominal_usd(fleet: Fleet, served: Served) -> Decimal:
    """The full-batch price of the served tokens: what the ledger charges for them."""
    return busy_gpu_hours(fleet, served) * fleet.gpu_usd_per_hour


@dataclass(frozen=True, slots=True)
class FleetCost:
    """A fleet's bill against its work over one window (see the module doc for the formulas)."""

    hours: Decimal
    billed_usd: Decimal
    nominal_usd: Decimal
    served_tokens: int
    useful_tokens: int
    capacity_tokens: Decimal
    busy_gpu_hours: Decimal
    utilization: Decimal | None
    """None for a window of no length."""

    @property
    def effective_usd_per_mtok(self) -> Decimal | None:
        """Billed dollars per million served tokens (None: nothing served)."""
        return self.billed_usd / self.served_tokens * _MILLION if self.served_tokens else None

    @property
    def nominal_usd_per_mtok(self) -> Decimal | None:
        """Nominal dollars per million served tokens (None: nothing served)."""
        return self.nominal_usd / self.served_tokens * _MILLION if self.served_tokens else None

    @property
    def effective_usd_per_useful_token(self) -> Decimal | None:
        """Billed dollars per useful token delivered (None: none delivered)."""
        return self.billed_usd / self.useful_tokens if self.useful_tokens else None

    @property
    def effective_over_nominal(self) -> Decimal | None:
        """How many times the nominal price each token really cost (None: nothing charged)."""
        return self.billed_usd / self.nominal_usd if self.nominal_usd else None


def fleet_cost(
    fleet: Fleet,
    hours: Decimal,
    served: Served,
    *,
    useful_tokens: int = 0,
    nominal: Decimal | None = None,
) -> FleetCost:
    """The fleet's bill over ``hours`` against what it served. ``nominal``: what the ledger
    charged for those calls, and so (÷ the GPU's rent) the GPU time they were priced at, at
    their operating batch; default :func:`nominal_usd`, every token at the full batch."""
    if hours < 0:
        raise ValueError(f"hours={hours}: a window cannot be negative")
    if nominal is None:
        nominal = nominal_usd(fleet, served)
    busy = nominal / fleet.gpu_usd_per_hour
    gpu_hours = fleet.gpus * hours
    return FleetCost(
        hours=hours,
        billed_usd=billed_usd(fleet, hours),
        nominal_usd=nominal,
        served_tokens=served.tokens,
        useful_tokens=useful_tokens,
        capacity_tokens=capacity_tokens(fleet, hours),
        busy_gpu_hours=busy,
        utilization=busy / gpu_hours if gpu_hours else None,
    )


@dataclass(frozen=True, slots=True)
class BreakEven:
    """Where a fleet and an API cost the same for one traffic mix."""

    tokens_per_day: Decimal | None
    """Served tokens a day at which the fleet's daily bill equals the API's price for them
    (None: that traffic costs nothing at the API's rates)."""
    fleet_tokens_per_day: Decimal | None
    """The most tokens of that mix the fleet can serve a day at full batch (None: the mix takes
    no GPU time)."""
    fleet_usd_per_day: Decimal
    api_usd_per_mtok: Decimal

    @property
    def reachable(self) -> bool:
        """Whether the fleet can serve the break-even volume at all."""
        if self.tokens_per_day is None:
            return False
        return self.fleet_tokens_per_day is None or self.tokens_per_day <= self.fleet_tokens_per_day


def break_even(fleet: Fleet, api: Rates, mix: Served) -> BreakEven:
    """The break-even of ``fleet`` against an API priced at ``api``, for traffic shaped like
    ``mix`` (its prompt, cached and completion tokens in the same proportions; the API is
    assumed to find the same share of prompt tokens in its cache)."""
    if not mix.tokens:
        raise ValueError("the traffic mix has no tokens; the break-even needs its shape")
    per_day = billed_usd(fleet, Decimal(24))
    api_per_token = api.cost(mix.prompt_tokens, mix.completion_tokens, mix.cached_tokens) / Decimal(
        mix.tokens
    )
    busy_per_token = busy_gpu_hours(fleet, mix) / mix.tokens
    return BreakEven(
        tokens_per_day=per_day / api_per_token if api_per_token else None,
        fleet_tokens_per_day=fleet.gpus * 24 / busy_per_token if busy_per_token else None,
        fleet_usd_per_day=per_day,
        api_usd_per_mtok=api_per_token * _MILLION,
    )
