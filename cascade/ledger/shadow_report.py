"""Live against shadow: what a candidate policy decided beside the live one (``--shadow``).

Per live policy and shadow version (its fingerprint), over the requests the shadow decided
(:mod:`cascade.ledger.shadow_facts`; their cost and attempts from the report's
:class:`~cascade.ledger.queries.RequestFacts`):

- agreement rate = requests whose shadow tier is the live first tier ÷ requests decided;
- tier mix: the live first tiers' shares, and the shadow tiers'; the matrix counts the requests
  by (live first tier, shadow tier);
- live outcome: cost per request = Σ cost ÷ requests, cost per useful token = Σ cost ÷ Σ useful
  tokens, escalation rate = requests with an ``escalation`` attempt ÷ requests;
- the shadow's outcome where it agreed: the same figures over the agreed requests, whose outcome
  under the shadow is the live one (the shadow would have sent them to the same tier);
- the shadow's estimate over all its requests (:mod:`cascade.ledger.off_policy`): cost per
  request, cost per useful token, escalation rate and good-answer rate, self-normalized inverse
  propensity weighted (an agreed request counts 1 / the live choice's propensity), each with
  its 95% confidence interval; none, with the reasons, where the traffic cannot support one
  (the shadow sends requests where the live policy, exploration included, never could have,
  or too few requests carry the estimate). Without live exploration every propensity is 1 and
  the estimate is the agreed requests' figures, trusted only while the shadow differs on few.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cascade.ledger.off_policy import (
    ExplorationReach,
    Interval,
    OffPolicyEstimate,
    OffPolicyEstimator,
    estimate_json,
)
from cascade.ledger.queries import RequestFacts
from cascade.ledger.shadow_facts import ShadowFacts

__all__ = [
    "Outcomes",
    "ShadowLine",
    "ShadowReport",
    "build_shadow_report",
    "format_shadow",
    "shadow_html",
    "shadow_json",
]

_ZERO = Decimal(0)
NOTE = (
    "where the shadow agreed, its outcome is the live one; its estimate over all its requests "
    "weights each agreed request by 1 / the live choice's propensity (self-normalized), with "
    "95% intervals, and is withheld, with the reasons, where the traffic cannot support it"
)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Cost and escalations over a set of requests."""

    requests: int
    cost_usd: Decimal
    useful_tokens: int
    escalated: int

    @property
    def cost_per_request(self) -> Decimal | None:
        """Σ cost ÷ requests (None: no request)."""
        return self.cost_usd / self.requests if self.requests else None

    @property
    def cost_per_useful_token(self) -> Decimal | None:
        """Σ cost ÷ Σ useful tokens (None: no useful token)."""
        return self.cost_usd / self.useful_tokens if self.useful_tokens else None

    @property
    def escalation_rate(self) -> float | None:
        """Requests with an escalation ÷ requests (None: no request)."""
        return self.escalated / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class ShadowLine:
    """One live policy against one version of its shadow."""

    policy: str
    shadow_version: str
    requests: int
    """Requests the shadow decided."""
    agreed: int
    live_mix: dict[str, float]
    shadow_mix: dict[str, float]
    matrix: dict[tuple[str, str], int]
    """Requests by (live first tier, shadow tier)."""
    tiers: tuple[str, ...]
    """Every tier of the matrix, in the report policy's order, then the others by name."""
    live: Outcomes
    where_agreed: Outcomes
    """The live outcome of the requests where the shadow agreed: its own outcome there."""
    estimate: OffPolicyEstimate
    """The shadow's figures over all its requests, or why the traffic cannot give them."""

    @property
    def agreement_rate(self) -> float:
        """Agreed ÷ requests decided."""
        return self.agreed / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """The shadow section (empty ``lines``: no shadow decision in the window)."""

    lines: tuple[ShadowLine, ...]
    note: str = NOTE


def build_shadow_report(
    facts: Sequence[RequestFacts],
    shadows: Mapping[str, ShadowFacts],
    *,
    tier_order: Sequence[str] = (),
) -> ShadowReport:
    """The section over the window's ``facts`` that have a shadow decision in ``shadows``."""
    groups: dict[tuple[str, str], list[tuple[RequestFacts, ShadowFacts]]] = defaultdict(list)
    for fact in facts:
        shadow = shadows.get(fact.request_id)
        if shadow is not None:
            groups[fact.policy, shadow.shadow_policy_version].append((fact, shadow))
    return ShadowReport(
        tuple(_line(key, groups[key], tier_order) for key in sorted(groups)),
    )


def _line(
    key: tuple[str, str],
    pairs: Sequence[tuple[RequestFacts, ShadowFacts]],
    tier_order: Sequence[str],
) -> ShadowLine:
    matrix: dict[tuple[str, str], int] = defaultdict(int)
    live_count: dict[str, int] = defaultdict(int)
    shadow_count: dict[str, int] = defaultdict(int)
    for fact, shadow in pairs:
        live_tier = fact.first_tier or "(none)"
        matrix[live_tier, shadow.shadow_tier] += 1
        live_count[live_tier] += 1
        shadow_count[shadow.shadow_tier] += 1
    agreed = [fact for fact, shadow in pairs if fact.first_tier == shadow.shadow_tier]
    seen = set(live_count) | set(shadow_count)
    tiers = tuple(t for t in tier_order if t in seen) + tuple(sorted(seen - set(tier_order)))
    n = len(pairs)
    return ShadowLine(
        policy=key[0],
        shadow_version=key[1],
        requests=n,
        agreed=len(agreed),
        live_mix={t: live_count[t] / n for t in tiers if t in live_count},
        shadow_mix={t: shadow_count[t] / n for t in tiers if t in shadow_count},
        matrix=dict(matrix),
        tiers=tiers,
        live=_outcomes([fact for fact, _ in pairs]),
        where_agreed=_outcomes(agreed),
        estimate=_estimate(pairs),
    )


def _estimate(pairs: Sequence[tuple[RequestFacts, ShadowFacts]]) -> OffPolicyEstimate:
    """The off-policy estimate of the shadow's figures from the live requests' outcomes."""
    reach = ExplorationReach(
        (fact.workload, shadow.decided_tier, fact.first_tier)
        for fact, shadow in pairs
        if shadow.explored
    )
    estimator = OffPolicyEstimator()
    rows = [(f, s) for f, s in pairs if f.first_tier is not None]
    estimator.add_chunk(
        logged_tier=[f.first_tier for f, _ in rows],
        propensity=[1.0 if s.propensity is None else s.propensity for _, s in rows],
        candidate_tier=[s.shadow_tier for _, s in rows],
        decided_tier=[s.decided_tier for _, s in rows],
        explorable=[reach.reaches(f.workload, s.decided_tier, s.shadow_tier) for f, s in rows],
        cost_usd=[float(f.cost_usd) for f, _ in rows],
        useful_tokens=[f.useful_tokens for f, _ in rows],
        escalated=[f.has_role("escalation") for f, _ in rows],
        good=[f.status == "ok" and not f.useless for f, _ in rows],
    )
    return estimator.result()


def _outcomes(facts: Sequence[RequestFacts]) -> Outcomes:
    return Outcomes(
        requests=len(facts),
        cost_usd=sum((f.cost_usd for f in facts), _ZERO),
        useful_tokens=sum(f.useful_tokens for f in facts),
        escalated=sum(1 for f in facts if f.has_role("escalation")),
    )


def shadow_json(report: ShadowReport) -> dict[str, Any]:
    """The section as JSON-ready data: money and cost ratios as exact decimal strings."""
    return {
        "policies": [
            {
                "policy": line.policy,
                "shadow_version": line.shadow_version,
                "requests": line.requests,
                "agreed": line.agreed,
                "agreement_rate": line.agreement_rate,
                "live_tier_shares": line.live_mix,
                "shadow_tier_shares": line.shadow_mix,
                "matrix": [
                    {"live_tier": live, "shadow_tier": shadow, "requests": count}
                    for (live, shadow), count in sorted(line.matrix.items())
                ],
                "live": _outcomes_json(line.live),
                "where_agreed": _outcomes_json(line.where_agreed),
                "estimate": estimate_json(line.estimate),
            }
            for line in report.lines
        ],
        "note": report.note,
    }


def _outcomes_json(outcomes: Outcomes) -> dict[str, Any]:
    return {
        "requests": outcomes.requests,
        "cost_usd": str(outcomes.cost_usd),
        "cost_per_request_usd": _text(outcomes.cost_per_request),
        "cost_per_useful_token_usd": _text(outcomes.cost_per_useful_token),
        "escalation_rate": outcomes.escalation_rate,
    }


def format_shadow(report: ShadowReport) -> list[str]:
    """The section as text lines ([] when no shadow decided a request in the window)."""
    if not report.lines:
        return []
    lines = ["shadow policies (decided beside the live policy, never acted on)"]
    for line in report.lines:
        lines += [
            f"  policy {line.policy}, shadow version {line.shadow_version}: "
            f"{line.requests:,} requests decided, agreed on {line.agreed:,} "
            f"({_percent(line.agreement_rate)})",
            f"    live tier mix     {_mix(line.live_mix)}",
            f"    shadow tier mix   {_mix(line.shadow_mix)}",
            "    live -> shadow    (requests; rows: the live first tier, columns: the shadow's)",
            *("      " + row for row in _grid(line)),
            f"    live              {_outcomes_text(line.live)}",
            f"    shadow, agreed    {_outcomes_text(line.where_agreed)}",
            f"    shadow, estimated {_estimate_text(line.estimate)}",
        ]
    lines.append(f"  note: {report.note}")
    return lines


def _grid(line: ShadowLine) -> list[str]:
    width = max(8, *(len(t) + 1 for t in line.tiers))
    head = " " * width + "".join(f"{t:>{width}}" for t in line.tiers)
    rows = [
        f"{live:<{width}}"
        + "".join(f"{line.matrix.get((live, shadow), 0):>{width},}" for shadow in line.tiers)
        for live in line.tiers
        if line.live_mix.get(live)
    ]
    return [head, *rows]


def _outcomes_text(outcomes: Outcomes) -> str:
    return (
        f"{outcomes.requests:,} requests, cost/request {_money(outcomes.cost_per_request)} USD, "
        f"cost/useful token {_money(outcomes.cost_per_useful_token)} USD, escalated "
        f"{_percent(outcomes.escalation_rate)}"
    )


def _estimate_text(estimate: OffPolicyEstimate) -> str:
    figures = estimate.candidate
    if figures is None:
        return "none: " + "; ".join(estimate.reasons)
    per_token = figures.cost_per_useful_token
    return (
        f"cost/request {_interval(figures.mean_cost_usd, money=True)} USD, cost/useful token "
        + ("n/a" if per_token is None else f"{_interval(per_token, money=True)} USD")
        + f", escalated {_interval(figures.escalation_rate)}, good "
        f"{_interval(figures.good_rate)} (95% intervals; {estimate.matched:,} agreed requests "
        f"carry it, effective sample size {estimate.ess:,.1f})"
    )


def _interval(interval: Interval, *, money: bool = False) -> str:
    if money:  # as the ledger's dollars are printed (Decimal's exponent has no padding)
        ends = (interval.low, interval.value, interval.high)
        low, value, high = (_money(Decimal(repr(end))) for end in ends)
        return f"{value} [{low}, {high}]"
    return f"{interval.value:.2%} [{interval.low:.2%}, {interval.high:.2%}]"


def shadow_html(report: ShadowReport) -> str:
    """The section of the HTML page ('' when no shadow decided a request in the window)."""
    if not report.lines:
        return ""
    parts = [
        "<h2>Shadow policies</h2><p class=sub>Decided beside the live policy, never acted on.</p>"
    ]
    for line in report.lines:
        head = "".join(f"<th>{html.escape(t)}</th>" for t in line.tiers)
        rows = "".join(
            f"<tr><td>{html.escape(live)}</td>"
            + "".join(f"<td>{line.matrix.get((live, s), 0):,}</td>" for s in line.tiers)
            + "</tr>"
            for live in line.tiers
            if line.live_mix.get(live)
        )
        summary = (
            f"Policy {line.policy}, shadow version {line.shadow_version}: {line.requests:,} "
            f"requests decided, agreed on {_percent(line.agreement_rate)}. Live: "
            f"{_outcomes_text(line.live)}. Shadow where it agreed: "
            f"{_outcomes_text(line.where_agreed)}. Shadow estimated: "
            f"{_estimate_text(line.estimate)}."
        )
        parts.append(
            f"<p>{html.escape(summary)}</p><table><thead><tr><th>live \\ shadow</th>{head}"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    parts.append(f"<p class=sub>{html.escape(report.note)}</p>")
    return "".join(parts)


def _mix(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{tier} {_percent(share)}" for tier, share in shares.items()) or "none"


def _money(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.6E}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
