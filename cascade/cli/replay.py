"""``cascade replay``: estimate a candidate policy's effect from the proxy's own logged traffic.

It re-decides the ledger's logged requests with the candidate's scorer model and thresholds
(:func:`cascade.ledger.replay.replay_policy`) and prints, beside the logged policy's measured
figures on the same requests, the candidate's estimated mean cost, cost per useful token,
escalation rate and good-answer rate with 95% intervals, its exact tier mix, and whether the
logged traffic can support the estimate at all (support, effective sample size). Exit status:
0 with an estimate, 1 when the data cannot support one (the reasons are printed), 2 on an error.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascade.ledger.off_policy import Figures, Interval
    from cascade.ledger.replay import ReplayResult

_URL_HELP = (
    "database URL (default: $CASCADE_DATABASE_URL, else sqlite:///cascade.db in the working "
    "directory)"
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``replay`` command."""
    replay = commands.add_parser(
        "replay",
        help="estimate what a candidate policy would cost and answer on the logged traffic",
        description="Re-decide the ledger's logged requests with a candidate policy's scorer "
        "model and thresholds (capacity ignored) and estimate, from the logged outcomes and "
        "their propensities (self-normalized inverse propensity scoring), its mean cost, cost "
        "per useful token, escalation rate and good-answer rate with 95%% intervals, beside "
        "the logged policy's measured figures. Says when the data cannot support an estimate "
        "(exit status 1): the candidate sends too many requests where the logged policy "
        "never could, or too few logged requests went where it sends them.",
    )
    replay.add_argument(
        "--policy", required=True, metavar="NEW.yaml", help="the candidate policy (file or name)"
    )
    replay.add_argument("--url", help=_URL_HELP)
    replay.add_argument(
        "--since",
        default="7d",
        help="only requests from the last 7d, 24h, 30m, since an ISO time "
        "(2026-12-01T00:00:00+00:00; UTC when no zone is given), or 'all' "
        "(default: %(default)s)",
    )
    replay.add_argument("--tenant", help="only this tenant's requests (default: every tenant)")
    replay.add_argument(
        "--logged",
        metavar="NAME",
        help="replay the requests routed by the policy of this name (default: the candidate's)",
    )
    replay.add_argument("--json", action="store_true", help="print JSON instead of a table")
    replay.set_defaults(command=_replay)


def _replay(ns: argparse.Namespace) -> int:
    from cascade.ledger.replay import replay_policy
    from cascade.policy import load_policy

    candidate = load_policy(ns.policy)
    result = replay_policy(
        ns.url, candidate, since=_since(ns.since), tenant=ns.tenant, logged_policy=ns.logged
    )
    print(json.dumps(replay_json(result), indent=2) if ns.json else format_replay(result))
    return 0 if result.estimate.supported else 1


def _since(text: str) -> datetime | None:
    from cascade.errors import LedgerError
    from cascade.ledger.reports import parse_since

    try:
        return parse_since(text)
    except LedgerError:
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise LedgerError(
                f"--since {text!r}: expected a number and d/h/m (7d, 24h, 30m), an ISO time "
                "(2026-12-01T00:00:00+00:00) or 'all'"
            ) from None
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def replay_json(result: ReplayResult) -> dict[str, Any]:
    """The replay as JSON (figures per token, intervals as ``{value, low, high}``)."""
    from cascade.ledger.off_policy import estimate_json

    window = result.window
    return {
        "candidate": result.candidate,
        "candidate_version": result.candidate_version,
        "model": result.model,
        "feature_version": result.feature_version,
        "logged_policy": window.policy,
        "since": None if window.since is None else window.since.isoformat(),
        "tenant": window.tenant,
        "requests": result.requests,
        "replayed": result.replayed,
        "left_out": result.left_out,
        "tiers": result.tiers,
        "logged_tiers": result.logged_tiers,
        "changed": result.changed,
        "estimate": estimate_json(result.estimate),
        "notes": list(result.notes),
    }


def format_replay(result: ReplayResult) -> str:
    """The replay as a readable table, with what was left out and how far to trust it."""
    est, window = result.estimate, result.window
    since = "all time" if window.since is None else f"since {window.since:%Y-%m-%d %H:%M} UTC"
    tenant = "" if window.tenant is None else f", tenant {window.tenant}"
    lines = [
        f"replay of {result.candidate} ({result.candidate_version}, model {result.model}, "
        f"features {result.feature_version})",
        f"on requests routed by {window.policy}, {since}{tenant}: {result.replayed:,} of "
        f"{result.requests:,} replayed",
    ]
    lines += [f"  left out {count:>10,}  {why}" for why, count in result.left_out.items()]
    n = max(result.replayed, 1)
    lines += [
        "",
        "tier mix (exact)     " + _mix(result.tiers, n),
        "logged tier mix      " + _mix(result.logged_tiers, n),
        f"decisions changed    {result.changed / n:.2%} of requests differ from the logged "
        "thresholds' tier",
        "",
        f"{'figure':<26}{'logged (measured)':<22}candidate (estimate, 95% interval)",
    ]
    names = (
        "mean cost per request",
        "cost per 1M useful tokens",
        "escalation rate",
        "good answers",
    )
    logged, candidate = _cells(est.logged), _cells(est.candidate)
    for name, have, guess in zip(names, logged, candidate, strict=True):
        lines.append(f"{name:<26}{have[0]:<22}{guess[0]} {guess[1]}".rstrip())
    lines += [
        "",
        *_wrapped(
            "support              ",
            f"{est.unsupported:,} of {est.rows:,} requests ({est.unsupported_share:.2%}) go "
            "where the logged policy could never have sent them (an estimate needs at most 5%)",
        ),
        *_wrapped(
            "effective sample     ",
            f"{est.ess:,.1f}, of the {est.matched:,} requests logged where the candidate sends "
            "them (an estimate needs at least 30)",
        ),
    ]
    if not est.supported:
        lines += ["", "cannot estimate:"]
        for why in est.reasons:
            lines += _wrapped("  - ", why)
    for note in result.notes:
        lines += _wrapped("note: ", note)
    return "\n".join(lines)


def _wrapped(head: str, text: str) -> list[str]:
    """``text`` after ``head``, wrapped at 100 columns under its own first line."""
    import textwrap

    return textwrap.wrap(text, width=100, initial_indent=head, subsequent_indent=" " * len(head))


def _mix(tiers: dict[str, int], total: int) -> str:
    return "  ".join(f"{name} {count / total:.1%}" for name, count in tiers.items()) or "-"


def _cells(figures: Figures | None) -> list[tuple[str, str]]:
    """Each figure as (value, interval) text; dashes when there is none."""
    if figures is None:
        return [("-", "")] * 4
    return [
        _cell(figures.mean_cost_usd, lambda v: f"${v:.6g}"),
        _cell(figures.cost_per_useful_token, lambda v: f"${v * 1e6:.6g}"),
        _cell(figures.escalation_rate, lambda v: f"{v:.2%}"),
        _cell(figures.good_rate, lambda v: f"{v:.2%}"),
    ]


def _cell(interval: Interval | None, show: Any) -> tuple[str, str]:
    if interval is None:
        return ("no useful tokens", "")
    return (show(interval.value), f"[{show(interval.low)}, {show(interval.high)}]")
