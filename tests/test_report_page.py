"""The HTML report in a real headless browser: a person at 1280 px sees the headline at once,
and nothing runs off the side of the page.

CI installs Debian's Chromium (``.ci/run``); the test measures the rendered page with a script
that writes its findings into the document title, read back with ``--dump-dom``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cascade.core.pricing import Rates
from cascade.ledger.budget_report import BudgetReport, build_budgets
from cascade.ledger.budgets import PeriodSpend
from cascade.ledger.queries import AttemptFacts, KeyBudget, RequestFacts
from cascade.ledger.report_html import render_html
from cascade.ledger.reports import build_report

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
MEASURE = """<script>
window.addEventListener("load", () => {
  const card = document.getElementById("headline").getBoundingClientRect();
  document.title = JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    innerHeight: window.innerHeight,
    headlineBottom: card.bottom,
    headlineRight: card.right,
    images: Array.from(document.images).map((i) => i.naturalWidth > 0 && i.width > 0),
  });
});
</script></body>"""


def _facts() -> list[RequestFacts]:
    """Two hours of traffic on three tiers and two tenants, with escalations and spills."""
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    tiers = ["small", "medium", "frontier"]
    facts = []
    for i in range(300):
        final = tiers[i % 3] if i % 7 else "frontier"
        attempts = []
        if i % 7 == 0:  # rejected by the cheap tier, escalated
            attempts.append(
                AttemptFacts(
                    0,
                    "small",
                    "primary",
                    "rejected",
                    80,
                    0,
                    40,
                    Decimal("0.00001"),
                    "length: cut at max_tokens",
                    None,
                )
            )
        if i % 11 == 0:
            attempts.append(
                AttemptFacts(
                    len(attempts),
                    "small",
                    "primary",
                    "error",
                    0,
                    0,
                    0,
                    Decimal(0),
                    "tier 'small': unavailable",
                    "unavailable",
                )
            )
        cost = {"small": "0.00002", "medium": "0.00006", "frontier": "0.0009"}[final]
        role = "primary" if not attempts else ("escalation" if i % 7 == 0 else "spill")
        attempts.append(
            AttemptFacts(len(attempts), final, role, "ok", 120, 40, 60, Decimal(cost), None, None)
        )
        facts.append(
            RequestFacts(
                request_id=f"req_{i}",
                created_at=start + timedelta(seconds=24 * i),
                tenant=("team-search-and-recommendations-long-name" if i % 2 else "team-a"),
                policy="default",
                first_tier="small",
                final_tier=final,
                status="ok",
                prefix_hash=f"p{i % 5}",
                prompt_tokens=120,
                cached_tokens=40,
                completion_tokens=60,
                cost_usd=sum((a.cost_usd for a in attempts), Decimal(0)),
                useful_tokens=60,
                useless=False,
                key_id=None,
                attempts=tuple(attempts),
            )
        )
    return facts


def _budgets(facts: list[RequestFacts], rates: Rates) -> BudgetReport:
    """Three budgeted keys of two tenants, one with a long name, in the middle of a period."""
    now = datetime(2026, 12, 1, 11, tzinfo=UTC)
    start = datetime(2026, 12, 1, tzinfo=UTC)  # a day's and a month's
    budgets = [
        KeyBudget(
            f"key{i:09d}",
            name,
            tenant,
            period,
            PeriodSpend(
                f"key{i:09d}", start, Decimal(limit), Decimal("12.5"), Decimal("2"), Decimal(1)
            ),
        )
        for i, (name, tenant, period, limit) in enumerate(
            [
                ("ci", "team-a", "day", "50"),
                ("nightly batch " * 8, "team-a", "month", "2000"),
                (None, "team-search-and-recommendations-long-name", "day", "100"),
            ]
        )
    ]
    return build_budgets(budgets, facts, frontier_rates=rates, now=now)


@pytest.mark.skipif(
    BROWSER is None and not os.environ.get("CI"),
    reason="no Chromium here (apt-get install chromium; .ci/run installs it, and in CI this "
    "test never skips)",
)
def test_the_report_reads_at_a_glance_in_a_browser_at_1280_px(tmp_path: Path) -> None:
    """At 1280x800 the page (with its Budgets table) has no horizontal overflow, the headline
    cards are fully visible without scrolling, and every chart image loads."""
    frontier = Rates(Decimal("0.0000025"), Decimal("0.00000125"), Decimal("0.00001"))
    report = build_report(
        _facts(), by="tier", policy="default", frontier_tier="frontier", frontier_rates=frontier
    )
    page = render_html(report, _budgets(_facts(), frontier))
    assert 'id="budgets"' in page
    assert report.has_tenants
    assert len(report.timeline) > 4  # two hours: more than one bar
    measured = tmp_path / "report.html"
    measured.write_text(page.replace("</body>", MEASURE), encoding="utf-8")
    assert BROWSER is not None
    dom = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,800",
            "--virtual-time-budget=5000",
            "--dump-dom",
            measured.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title is not None, dom[:500]
    seen = json.loads(title.group(1).replace("&quot;", '"'))
    assert seen["innerWidth"] == 1280
    assert seen["scrollWidth"] <= seen["innerWidth"], "the page scrolls sideways"
    assert seen["headlineBottom"] <= seen["innerHeight"], "the headline is below the fold"
    assert seen["headlineRight"] <= seen["innerWidth"]
    assert seen["images"] == [True, True, True]


def test_the_frontier_row_has_no_savings_against_itself() -> None:
    """The frontier tier's row says nothing about savings instead of '-0.00%'."""
    frontier = Rates(Decimal("0.0000025"), Decimal("0.00000125"), Decimal("0.00001"))
    report = build_report(
        _facts(), by="tier", policy="default", frontier_tier="frontier", frontier_rates=frontier
    )
    page = render_html(report)
    row = re.search(r"<tr><td>frontier</td>(.*?)</tr>", page)
    assert row is not None
    assert "-" not in row.group(1).replace("&#x27;", "")
    assert "escalated" in page
    assert "answer rejected, escalated: length" in page
    assert "call failed: unavailable" in page
