"""95% confidence intervals for comparing two arms of traffic (pure Python, no SciPy).

- a mean (cost per request): the normal interval, mean ± z·s/√n;
- a ratio of sums (cost per useful token, Σ cost ÷ Σ useful tokens): the delta method,
  R ± z·SE with SE² = Σ (cᵢ - R·uᵢ)² / ((n - 1)·n·ū²);
- a proportion (escalation rate, useless rate): Wilson's score interval, which stays inside
  [0, 1] and is honest at rates near 0;
- a quantile (p95 latency): the nearest-rank estimate and the distribution-free interval
  between two order statistics (ranks n·p ± z·√(n·p·(1 - p)));
- a difference of two arms: for proportions Newcombe's hybrid score interval (from the two
  Wilson intervals); for the others the normal interval with SE² = SE₁² + SE₂², where a
  quantile's SE is read from its order-statistic interval (its width ÷ 2z, as Price and Bonett
  do for medians).

An estimate the data cannot support (too few requests, no useful token, a rank outside the
sample) has ``None`` for the value or bounds it cannot give; a difference then has none either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Z95",
    "Estimate",
    "difference",
    "mean_interval",
    "proportion_interval",
    "quantile_interval",
    "ratio_interval",
]

Z95 = 1.959963984540054
"""The standard normal's 97.5th percentile: a two-sided 95% interval."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its 95% interval (``None``: the data cannot say)."""

    value: float | None
    low: float | None = None
    high: float | None = None
    se: float | None = None
    """The standard error behind a normal interval (None for Wilson's)."""
    successes: int | None = None
    """For a proportion: the count of the ``n`` requests it is of (Newcombe needs the bounds)."""


def mean_interval(values: Sequence[float]) -> Estimate:
    """The mean with its normal interval (no interval below two values)."""
    n = len(values)
    if n == 0:
        return Estimate(None)
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    se = math.sqrt(variance / n)
    return Estimate(mean, mean - Z95 * se, mean + Z95 * se, se)


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
    """Σ numerators ÷ Σ denominators with its delta-method interval (None: the denominators
    sum to 0)."""
    n = len(numerators)
    total = math.fsum(denominators)
    if n == 0 or total <= 0:
        return Estimate(None)
    ratio = math.fsum(numerators) / total
    if n < 2:
        return Estimate(ratio)
    residuals = math.fsum(
        (c - ratio * u) ** 2 for c, u in zip(numerators, denominators, strict=True)
    )
    mean_denominator = total / n
    se = math.sqrt(residuals / ((n - 1) * n)) / mean_denominator
    return Estimate(ratio, ratio - Z95 * se, ratio + Z95 * se, se)


def proportion_interval(successes: int, n: int) -> Estimate:
    """``successes / n`` with Wilson's score interval (None without requests)."""
    if n == 0:
        return Estimate(None)
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), successes=successes)


def quantile_interval(values: Sequence[float], q: float = 0.95) -> Estimate:
    """The ``q`` quantile (nearest rank: the ⌈q·n⌉-th smallest) with the interval between the
    order statistics of ranks q·n ± z·√(n·q·(1 - q)); a bound whose rank falls outside the
    sample is None."""
    n = len(values)
    if n == 0:
        return Estimate(None)
    ordered = sorted(values)
    value = ordered[max(1, math.ceil(q * n)) - 1]
    spread = Z95 * math.sqrt(n * q * (1 - q))
    low_rank, high_rank = math.floor(n * q - spread), math.ceil(n * q + spread)
    low = ordered[low_rank - 1] if low_rank >= 1 else None
    high = ordered[high_rank - 1] if high_rank <= n else None
    se = None if low is None or high is None else (high - low) / (2 * Z95)
    return Estimate(value, low, high, se)


def difference(canary: Estimate, control: Estimate) -> Estimate:
    """``canary - control`` with its 95% interval (Newcombe's for two proportions)."""
    if canary.value is None or control.value is None:
        return Estimate(None)
    d = canary.value - control.value
    if canary.successes is not None and control.successes is not None:
        low, high = canary.low, canary.high
        low_0, high_0 = control.low, control.high
        if low is None or high is None or low_0 is None or high_0 is None:
            return Estimate(d)
        below = math.hypot(canary.value - low, high_0 - control.value)
        above = math.hypot(high - canary.value, control.value - low_0)
        return Estimate(d, d - below, d + above)
    if canary.se is None or control.se is None:
        return Estimate(d)
    se = math.hypot(canary.se, control.se)
    return Estimate(d, d - Z95 * se, d + Z95 * se, se)
