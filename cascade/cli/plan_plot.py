"""``cascade plan --plot``: daily cost against replicas, one panel per traffic scale.

In each panel, one line per self-hosted tier: the day's cost as that tier's replicas vary, the
other tiers held at the cheapest fleet's counts (a fleet that misses the targets is drawn
hollow); the all-API and peak-provisioned fleets as horizontal lines, the cheapest as a star.
matplotlib (the ``train`` extra) is imported on use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cascade.core.fleet_plan import FleetOutcome
from cascade.core.fleet_search import FleetPlan, Scenario

__all__ = ["draw_plan"]


def draw_plan(plan: FleetPlan, path: Path) -> None:
    """Write the chart to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    count = len(plan.scenarios)
    figure, axes = plt.subplots(1, count, figsize=(5.5 * count, 4.2), squeeze=False)
    for ax, scenario in zip(axes[0], plan.scenarios, strict=True):
        _panel(ax, scenario)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"cascade plan: policy {plan.policy}, $ a day by replicas")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panel(ax: Any, scenario: Scenario) -> None:
    anchor = scenario.cheapest or scenario.peak
    held = dict(anchor.replicas)
    for name in held:
        line = sorted(
            (f for f in scenario.fleets if _varies_only(f, held, name)),
            key=lambda f: f.count(name),
        )
        xs = [f.count(name) for f in line]
        ax.plot(xs, [f.total_usd for f in line], marker="o", markersize=3, label=name)
        missed = [f for f in line if not f.meets]
        if missed:
            ax.scatter(
                [f.count(name) for f in missed],
                [f.total_usd for f in missed],
                facecolors="none",
                edgecolors="grey",
                zorder=3,
            )
    ax.axhline(scenario.all_api.total_usd, color="tab:red", linestyle="--", label="all-API")
    ax.axhline(scenario.peak.total_usd, color="tab:grey", linestyle=":", label="peak-provisioned")
    title = f"{scenario.scale:g}x traffic"
    if scenario.cheapest is not None:
        best = scenario.cheapest
        for _, n in best.replicas:
            ax.scatter([n], [best.total_usd], marker="*", s=140, color="black", zorder=4)
        named = ", ".join(f"{name} {n}" for name, n in best.replicas)
        title += f": cheapest ${best.total_usd:,.0f} ({named})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("replicas of the tier (others as in the cheapest fleet)")
    ax.set_ylabel("$ a day")
    ax.set_yscale("log")
    ax.legend(fontsize=8, loc="best")


def _varies_only(fleet: FleetOutcome, held: dict[str, int], name: str) -> bool:
    return all(n == held[other] for other, n in fleet.replicas if other != name)
