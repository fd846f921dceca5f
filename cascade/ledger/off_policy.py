"""Off-policy estimates: what a candidate policy would have done on traffic another policy routed.

Pure arithmetic over the ledger's logged rows, no I/O: ``cascade replay`` and ``cascade report``'s
shadow comparison feed it. Each logged request carries the tier it was sent to first, the
probability the logging policy had of choosing that tier (its ``propensity``: 1 without
exploration) and its outcome; the candidate names the tier it would have chosen. A request the
candidate sends where the logged one went counts with weight ``1 / propensity``, any other with
weight 0 (inverse propensity scoring), and every figure is self-normalized (SNIPS)::

    mean of y  =  Σ w·y / Σ w                     cost per useful token  =  Σ w·cost / Σ w·useful

Their 95% confidence intervals come from the delta method over sums kept as rows arrive, so
nothing is held per row: ``Var(Σwy/Σw) ≈ Σ w²(y - mean)² / (Σw)²`` and, for the ratio,
``Var ≈ Σ w²(cost - R·useful)² / (Σ w·useful)²``.

An estimate is only as good as the traffic behind it, so the result says when it cannot be given:

- **support**: a row whose candidate tier the logging policy could never have chosen for it
  (neither its thresholds' tier, ``decided_tier``, nor, where exploration was possible --
  propensity below 1 -- a tier exploration could send it to) holds no outcome the estimate could
  use; above ``max_unsupported`` of the rows (5%) the estimate would be biased by what it cannot
  see. Which tiers exploration reaches is not on the row (it depends on the logging policy's
  shares and on which tiers had room): :class:`ExplorationReach` reads it from the log itself,
  as the tiers explored requests of the same workload and decided tier were sent to;
- **effective sample size** ``(Σw)² / Σw²``: how many equally weighted requests the estimate is
  worth; below ``min_ess`` (30) the interval itself is not to be trusted.

Either way the candidate's figures are None and ``reasons`` says why, in words.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ExplorationReach",
    "Figures",
    "Interval",
    "OffPolicyEstimate",
    "OffPolicyEstimator",
    "WeightedSums",
    "estimate_json",
]

Z_95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a 95% two-sided interval is ±1.96 standard errors."""
MAX_UNSUPPORTED = 0.05
"""Above this share of unsupported rows, no estimate is given."""
MIN_ESS = 30.0
"""Below this effective sample size, no estimate is given."""

_Floats = npt.NDArray[np.float64]

_TERMS = (
    *("w", "w2"),  # Σw, Σw²
    *("w_c", "w2_c", "w2_c2"),  # cost: Σwc, Σw²c, Σw²c²
    *("w_e", "w2_e", "w2_e2"),  # escalated
    *("w_g", "w2_g", "w2_g2"),  # good
    *("w_u", "w2_cu", "w2_u2"),  # useful tokens, for the ratio: Σwu, Σw²cu, Σw²u²
)
"""The sums :class:`WeightedSums` keeps, in the order :meth:`WeightedSums.add` adds them."""


@dataclass(frozen=True, slots=True)
class Interval:
    """A figure with its 95% confidence interval (clipped to the figure's possible range)."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """1.96 standard errors (the wider side, when one side was clipped)."""
        return max(self.value - self.low, self.high - self.value)


@dataclass(frozen=True, slots=True)
class Figures:
    """The four figures replay compares: per request, mean cost, escalation rate and good-answer
    rate; cost per useful token over all of them (None when no token was useful)."""

    mean_cost_usd: Interval
    cost_per_useful_token: Interval | None
    escalation_rate: Interval
    """Share of requests whose first answer was rejected and that went up a tier."""
    good_rate: Interval
    """Share of requests answered (status ok) and not marked useless by feedback."""


@dataclass
class WeightedSums:
    """Running weighted sums of the outcomes, enough for :class:`Figures` and their intervals.

    With every weight 1 they give the plain (measured) figures of the rows added.
    """

    sums: _Floats = field(default_factory=lambda: np.zeros(len(_TERMS)))

    def add(
        self,
        weights: _Floats,
        cost_usd: _Floats,
        useful_tokens: _Floats,
        escalated: _Floats,
        good: _Floats,
    ) -> None:
        """Add a chunk of rows (arrays of equal length; booleans as 0/1)."""
        w, w2 = weights, weights * weights
        c, u = cost_usd, useful_tokens
        terms = [w, w2]
        for y in (c, escalated, good):
            terms += [w * y, w2 * y, w2 * y * y]
        terms += [w * u, w2 * c * u, w2 * u * u]
        self.sums += np.array([float(np.sum(t)) for t in terms])

    @property
    def weight(self) -> float:
        """Σ w."""
        return float(self.sums[0])

    @property
    def ess(self) -> float:
        """Effective sample size (Σw)² / Σw² (0 when nothing is weighted)."""
        w, w2 = self.sums[0], self.sums[1]
        return float(w * w / w2) if w2 > 0 else 0.0

    def figures(self) -> Figures | None:
        """The self-normalized figures with their intervals; None when Σw is 0."""
        s = dict(zip(_TERMS, self.sums.tolist(), strict=True))
        if s["w"] <= 0:
            return None

        def mean(name: str, high: float) -> Interval:
            value = s[f"w_{name}"] / s["w"]
            spread = s[f"w2_{name}2"] - 2 * value * s[f"w2_{name}"] + value * value * s["w2"]
            return _interval(value, math.sqrt(max(spread, 0.0)) / s["w"], high)

        return Figures(
            mean_cost_usd=mean("c", math.inf),
            cost_per_useful_token=self._ratio(s),
            escalation_rate=mean("e", 1.0),
            good_rate=mean("g", 1.0),
        )

    @staticmethod
    def _ratio(s: dict[str, float]) -> Interval | None:
        if s["w_u"] <= 0:
            return None
        ratio = s["w_c"] / s["w_u"]
        spread = s["w2_c2"] - 2 * ratio * s["w2_cu"] + ratio * ratio * s["w2_u2"]
        return _interval(ratio, math.sqrt(max(spread, 0.0)) / s["w_u"], math.inf)


def _interval(value: float, standard_error: float, high: float) -> Interval:
    half = Z_95 * standard_error
    return Interval(value, max(value - half, 0.0), min(value + half, high))


@dataclass(frozen=True, slots=True)
class OffPolicyEstimate:
    """What the logged rows say about the candidate, and whether they can say it."""

    rows: int
    """Logged rows fed in."""
    matched: int
    """Rows the candidate sends to the tier they were logged on (the ones that count)."""
    unsupported: int
    """Rows whose candidate tier the logging policy could never have chosen for them."""
    ess: float
    """Effective sample size of the matched rows, (Σw)² / Σw²."""
    logged: Figures | None
    """The logging policy's measured figures on the same rows (None: no rows)."""
    candidate: Figures | None
    """The candidate's estimated figures; None when the data cannot support them."""
    reasons: tuple[str, ...]
    """Why there is no estimate, in words (empty when there is one)."""

    @property
    def unsupported_share(self) -> float:
        """``unsupported / rows`` (0 without rows)."""
        return self.unsupported / self.rows if self.rows else 0.0

    @property
    def supported(self) -> bool:
        """True when the candidate's figures were estimated."""
        return self.candidate is not None


class OffPolicyEstimator:
    """Accumulates logged rows against a candidate's tiers; :meth:`result` gives the estimate.

    Feed rows one at a time (:meth:`add`) or as arrays (:meth:`add_chunk`): per row, the tier
    it was logged on first, that choice's propensity, the candidate's tier, the logging
    thresholds' ``decided_tier``, whether exploration could have sent the row to the candidate's
    tier (``explorable``, read only where the propensity is below 1; see
    :class:`ExplorationReach`), and its outcome.
    """

    def __init__(
        self, *, max_unsupported: float = MAX_UNSUPPORTED, min_ess: float = MIN_ESS
    ) -> None:
        self.max_unsupported, self.min_ess = max_unsupported, min_ess
        self.logged, self.candidate = WeightedSums(), WeightedSums()
        self.rows = self.matched = self.unsupported = 0

    def add(
        self,
        *,
        logged_tier: str,
        propensity: float,
        candidate_tier: str,
        decided_tier: str | None,
        explorable: bool,
        cost_usd: float,
        useful_tokens: float,
        escalated: bool,
        good: bool,
    ) -> None:
        """Add one logged row."""
        self.add_chunk(
            logged_tier=[logged_tier],
            propensity=[propensity],
            candidate_tier=[candidate_tier],
            decided_tier=[decided_tier],
            explorable=[explorable],
            cost_usd=[cost_usd],
            useful_tokens=[useful_tokens],
            escalated=[escalated],
            good=[good],
        )

    def add_chunk(
        self,
        *,
        logged_tier: Sequence[str | None] | npt.NDArray[Any],
        propensity: Sequence[float] | npt.NDArray[Any],
        candidate_tier: Sequence[str | None] | npt.NDArray[Any],
        decided_tier: Sequence[str | None] | npt.NDArray[Any],
        explorable: Sequence[bool] | npt.NDArray[Any],
        cost_usd: Sequence[float] | npt.NDArray[Any],
        useful_tokens: Sequence[float] | npt.NDArray[Any],
        escalated: Sequence[bool] | npt.NDArray[Any],
        good: Sequence[bool] | npt.NDArray[Any],
    ) -> None:
        """Add logged rows given column by column (sequences or arrays of one length)."""
        p = np.asarray(propensity, dtype=np.float64)
        bad = ~((p > 0) & (p <= 1))
        if bad.any():
            raise ValueError(
                f"propensity must be in (0, 1], got {float(p[bad][0]):g}: it is the probability "
                "the logging policy had of choosing the logged tier"
            )
        logged, wanted = _names(logged_tier), _names(candidate_tier)
        matched = logged == wanted
        supported = (
            matched
            | (_names(decided_tier) == wanted)
            | ((p < 1) & np.asarray(explorable, dtype=bool))
        )
        outcomes = (
            np.asarray(cost_usd, dtype=np.float64),
            np.asarray(useful_tokens, dtype=np.float64),
            np.asarray(escalated, dtype=np.float64),
            np.asarray(good, dtype=np.float64),
        )
        self.rows += len(p)
        self.matched += int(matched.sum())
        self.unsupported += int((~supported).sum())
        self.logged.add(np.ones(len(p)), *outcomes)
        self.candidate.add(np.where(matched, 1.0 / p, 0.0), *outcomes)

    def result(self) -> OffPolicyEstimate:
        """The estimate so far, or the reasons there is none."""
        reasons: list[str] = []
        ess = self.candidate.ess
        if self.rows == 0:
            reasons.append("no logged requests to estimate from")
        elif self.matched == 0:
            reasons.append(
                "no logged request went to the tier the candidate chooses for it: the traffic "
                "holds no outcome of the candidate's choices"
            )
        else:
            share = self.unsupported / self.rows
            if share > self.max_unsupported:
                reasons.append(
                    f"{self.unsupported} of {self.rows} requests ({share:.1%}, more than "
                    f"{self.max_unsupported:.0%}) go to a tier under the candidate that the "
                    "logged policy could never have sent them to, so the traffic shows nothing of "
                    "what that tier would have done with them; log with exploration "
                    "(learning.explore) to gather it"
                )
            if ess < self.min_ess:
                reasons.append(
                    f"the effective sample size is {ess:.1f}, below {self.min_ess:g}: too few "
                    "logged requests went where the candidate sends them for a sound estimate"
                )
        return OffPolicyEstimate(
            rows=self.rows,
            matched=self.matched,
            unsupported=self.unsupported,
            ess=ess,
            logged=self.logged.figures(),
            candidate=None if reasons else self.candidate.figures(),
            reasons=tuple(reasons),
        )


class ExplorationReach:
    """Which tiers the logging policy's exploration sent requests to, read from the log itself:
    per workload and decided tier, the first tiers of the explored requests.

    A request that could have been explored (propensity below 1) could have gone to any of them;
    a tier exploration never reached for its kind is taken as out of reach (which errs towards
    calling a row unsupported, never towards trusting it).
    """

    def __init__(self, explored: Iterable[tuple[str, str | None, str | None]] = ()) -> None:
        """``explored``: ``(workload, decided_tier, first_tier)`` of explored requests (repeats
        are fine: a ``GROUP BY`` of them is enough)."""
        self._seen = {(w, d, t) for w, d, t in explored if d is not None and t is not None}

    def reaches(self, workload: str, decided_tier: str | None, tier: str) -> bool:
        """True when exploration sent some request of this workload and decided tier to
        ``tier``."""
        return (workload, decided_tier, tier) in self._seen

    def mask(
        self,
        workload: Sequence[str],
        decided_tier: Sequence[str | None],
        tier: Sequence[str | None],
    ) -> npt.NDArray[np.bool_]:
        """:meth:`reaches` for rows given column by column."""
        seen = self._seen
        rows = zip(workload, decided_tier, tier, strict=True)
        return np.fromiter((row in seen for row in rows), dtype=bool, count=len(workload))


def _names(values: Sequence[str | None] | npt.NDArray[Any]) -> npt.NDArray[np.object_]:
    return np.asarray(values, dtype=object)


def estimate_json(estimate: OffPolicyEstimate) -> dict[str, Any]:
    """A JSON-ready view of an estimate (intervals as ``{value, low, high}``, None as null)."""
    out = asdict(estimate)
    out["unsupported_share"] = estimate.unsupported_share
    out["supported"] = estimate.supported
    out["reasons"] = list(estimate.reasons)
    return out
