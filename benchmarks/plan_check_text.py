"""``benchmarks/plan_check.py``'s run as text: the day, what ``cascade plan`` printed, and
plan against measured for the recommended fleet (and ``--also``'s)."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING

from benchmarks.day_replay import Fleet
from benchmarks.plan_measure import Figure, Measured
from cascade.cli import main as cascade

if TYPE_CHECKING:
    from benchmarks.plan_check import CheckResult

__all__ = ["format_check"]

_PERCENT = ("spill", "utilization", "  slots", "  busiest")


def format_check(result: CheckResult) -> str:
    """The run as text (see the module docstring)."""
    requests = len(result.served.sent)
    recorded, served, fleet = result.recorded, result.served, result.fleet
    lines = [
        f"a day of {requests:,} requests in {result.day_s:g} s (an hour every "
        f"{result.day_s / 24:.2f} s), each standing for {result.scale:,.0f}: "
        f"{requests * result.scale / 1e6:,.1f}M requests a day",
        f"recorded on the default fleet ({_fleet_text(Fleet.default())}) in "
        f"{recorded.wall_s:.0f} s: {recorded.database}",
        "",
        "$ cascade " + " ".join(result.plan_args),
        _plan_text(result.plan_args),
        "",
        f"served on the plan's cheapest fleet ({_fleet_text(fleet)}) in {served.wall_s:.0f} s: "
        f"{served.database}",
        "",
        *_table(result.measured),
        "",
        "time per output token (simulated ms):",
    ]
    for timing in result.measured.timings:
        over = "" if timing.over_target is None else f"; {timing.over_target:.1%} above the target"
        lines.append(
            f"  {timing.tier:<7} {timing.sequences:,} sequences: mean {timing.mean_ms:.2f}, p90 "
            f"{timing.p90_ms:.2f}; busiest hour {timing.busiest_hour:02d}:00 mean "
            f"{timing.busiest_mean_ms:.2f}{over}"
        )
    lines += ["", "cascade report's fleet section for the served day (the replay x scale):"]
    for name, cost in result.measured.fleets.items():
        lines.append(
            f"  {name:<7} bill ${cost.billed_usd:,.2f} for {fleet.replicas[name]} GPU(s) x 24 h; "
            f"utilization {float(cost.utilization or 0):.1%}; effective "
            f"${float(cost.effective_usd_per_mtok or 0):.4f}/M tokens against nominal "
            f"${float(cost.nominal_usd_per_mtok or 0):.4f}/M "
            f"({float(cost.effective_over_nominal or 0):.2f}x)"
        )
    if result.also is not None:
        other, replay, measured = result.also
        lines += [
            "",
            f"also served on {_fleet_text(other)} in {replay.wall_s:.0f} s: {replay.database}",
            "",
            *_table(measured),
        ]
        saved = _total(measured) - _total(result.measured)
        lines.append(f"measured: the plan's cheapest fleet costs ${saved:,.2f} a day less")
    hour = result.day_s / 24
    for replay in (recorded, served, *([result.also[1]] if result.also else [])):
        if replay.late_s > hour / 10:
            lines.append(
                f"WARNING: requests reached the proxy up to {replay.late_s:.1f} s behind the "
                f"schedule in {replay.database.name} (an hour is {hour:.1f} s): the host fell "
                "behind and reshaped the day; rerun on a quieter machine or a larger --time-scale"
            )
    verdict = "within" if result.measured.within else "NOT within"
    lines += ["", f"measured cost and time per token {verdict} the plan's stated error"]
    return "\n".join(lines)


def _table(measured: Measured) -> list[str]:
    head = f"{'':<20} {'plan':>10} {'measured':>10} {'error':>8}  stated error"
    return [head, *(_figure_row(figure) for figure in measured.figures)]


def _total(measured: Measured) -> float:
    return next(f.measured for f in measured.figures if f.name == "cost $/day")


def _fleet_text(fleet: Fleet) -> str:
    return ", ".join(f"{name} {n} x {fleet.batch[name]}" for name, n in fleet.replicas.items())


def _plan_text(args: list[str]) -> str:
    """What ``cascade ARGS`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cascade(args)
    return out.getvalue().rstrip()


def _figure_row(figure: Figure) -> str:
    percent = figure.name.startswith(_PERCENT)

    def shown(value: float) -> str:
        return f"{value:.2%}" if percent else f"{value:,.2f}"

    if percent:  # shares differ in points, not relative to a share that may be 0
        error = f"{(figure.measured - figure.plan) * 100:+.2f} pt"
    else:
        error = "" if figure.error is None else f"{figure.error:+.1%}"
    stated = ""
    if figure.bounds is not None:
        low, high = figure.bounds
        stated = f"{shown(low)}-{shown(high)}" if low else f"at most {shown(high)}"
    if figure.within is not None:
        stated += "  ok" if figure.within else "  OUTSIDE"
    return (
        f"{figure.name:<20} {shown(figure.plan):>10} {shown(figure.measured):>10} "
        f"{error:>9}  {stated}"
    )
