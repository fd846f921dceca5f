"""Shadow policies (``cascade serve --shadow``): the real proxy on simulated tiers decides every
request under a candidate too, records it in the ledger, and never acts on it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog.testing
from sqlalchemy import select

from cascade.cli import main
from cascade.core.capacity import StaticCapacity
from cascade.core.planner import Planner
from cascade.ledger import create_engine
from cascade.ledger.models import Attempt, Request
from cascade.model.scorer import OnnxScorer
from cascade.policy import load_policy
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import running_tier, serving, wait_until
from tests.test_batches import chat_line, jsonl, wait_for_end
from tests.test_keys import make_key
from tests.test_proxy_ledger import postgres_database

POLICY = """\
name: simulated
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, threshold: {threshold}}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}}}
workloads:
  interactive: {{}}
  {extra_workload}
escalation:
  checks: [length, empty]
{tail}"""
PROMPTS = [
    "What is 7 times 8?",
    "Name a prime above 10.",
    "What is the capital of France?",
    "Prove that there are infinitely many primes.",
    "Write a Python function that merges two sorted lists.",
    "Explain the difference between TCP and UDP in detail, with examples.",
    "Translate 'good morning' into Spanish.",
    "A train leaves at 3pm going 60 mph; another at 4pm going 80 mph. When does the second one "
    "catch up?",
    "Summarize the causes of the French Revolution.",
    "What is 2+2?",
    "Derive the closed form of the Fibonacci sequence using generating functions.",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes muffins with four. "
    "She sells the rest for $2 each. How much does she make?",
]
# The candidate: a stricter small tier, exploring half of what goes up (never applied to it).
STRICTER = {"threshold": 0.85, "tail": "learning: {explore: 0.5}\n"}
# Another model, a looser small tier.
OTHER_MODEL = {"threshold": 0.8, "tail": "scorer: {model: tfidf-lr-v1}\n"}


def policy_text(small: str, medium: str, **changes: Any) -> str:
    """The live policy (small's threshold 0.818, the shipped scorer) or a candidate of it."""
    fields = {"threshold": 0.818, "extra_workload": "", "tail": ""} | changes
    return POLICY.format(small=small, medium=medium, **fields)


@dataclass
class Tiers:
    small: str
    medium: str


@pytest.fixture(scope="module")
def tiers() -> Iterator[Tiers]:
    """Simulated 1.5B and 7B tiers, shared by the module's proxies."""
    with (
        running_tier("1.5b", time_scale=0.001) as small,
        running_tier("7b", time_scale=0.001) as medium,
    ):
        yield Tiers(small, medium)


def thresholds_tier(policy: Path, prompt: str) -> tuple[str, float]:
    """The tier and confidence ``policy``'s thresholds give ``prompt`` with no call in flight."""
    loaded = load_policy(policy)
    planner = Planner(loaded, OnnxScorer(loaded.scorer.model), StaticCapacity({}))
    decision = planner.plan(prompt, explore=False)
    return decision.tier, decision.confidence


def send(url: str, prompts: list[str], **headers: str) -> list[httpx.Response]:
    """Each prompt once, in order, through the proxy."""
    return [
        httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "cascade", "messages": [{"role": "user", "content": prompt}]},
            headers=headers,
            timeout=30,
        )
        for prompt in prompts
    ]


async def _ledger(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            requests = (await conn.execute(select(Request.__table__))).mappings().all()
            attempts = (await conn.execute(select(Attempt.__table__))).mappings().all()
    finally:
        await engine.dispose()
    return [dict(r) for r in requests], [dict(a) for a in attempts]


def ledger(url: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[tuple[str, str, str]]]]:
    """The ledger's requests by id, and each request's calls as (tier, role, outcome)."""
    requests, attempts = asyncio.run(_ledger(url))
    calls: dict[str, list[tuple[str, str, str]]] = {}
    for a in sorted(attempts, key=lambda a: (a["request_id"], a["seq"])):
        calls.setdefault(a["request_id"], []).append((a["tier"], a["role"], a["outcome"]))
    return {r["request_id"]: r for r in requests}, calls


@dataclass
class Run:
    """One pass of the prompts through a proxy with a ledger."""

    answers: list[httpx.Response]
    database: str
    metrics: str
    folder: Path
    """Where its policy files are: ``live.yaml``, and ``candidate.yaml`` with a shadow."""


def serve_prompts(tmp: Path, tiers: Tiers, database: str, shadow: dict[str, Any] | None) -> Run:
    live = tmp / "live.yaml"
    live.write_text(policy_text(tiers.small, tiers.medium))
    shadows: tuple[str, ...] = ()
    if shadow is not None:
        candidate = tmp / "candidate.yaml"
        candidate.write_text(policy_text(tiers.small, tiers.medium, **shadow))
        shadows = (str(candidate),)
    settings = ServerSettings(
        policies=(str(live),),
        shadows=shadows,
        database_url=database,
        spool_path=str(tmp / "spool"),
        virtual_keys=False,
    )
    with serving(create_app(settings)) as url:
        answers = send(url, PROMPTS * 2)
        metrics = httpx.get(f"{url}/metrics").text
    return Run(answers, database, metrics, tmp)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiers: Tiers) -> tuple[Run, Run]:
    """The same prompts without a shadow, then with the stricter candidate as shadow."""
    plain, shadowed = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("shadowed")
    without = serve_prompts(plain, tiers, f"sqlite:///{plain / 'ledger.db'}", None)
    with_shadow = serve_prompts(shadowed, tiers, f"sqlite:///{shadowed / 'ledger.db'}", STRICTER)
    return without, with_shadow


def test_every_row_carries_the_shadow_decision(runs: tuple[Run, Run]) -> None:
    """Each request's row has the candidate's name, version, tier and confidence: the tier its
    thresholds choose (never explored, though it explores half), the live confidence reused
    (same scorer model); and the two disagree on some requests."""
    _, shadowed = runs
    rows, _ = ledger(shadowed.database)
    candidate = shadowed.folder / "candidate.yaml"
    version = load_policy(candidate).fingerprint
    by_id = {
        a.headers["x-cascade-request-id"]: prompt
        for a, prompt in zip(shadowed.answers, PROMPTS * 2, strict=True)
    }
    assert len(rows) == len(PROMPTS) * 2
    differed = 0
    for request_id, row in rows.items():
        tier, confidence = thresholds_tier(candidate, by_id[request_id])
        assert (row["shadow_policy"], row["shadow_policy_version"]) == ("simulated", version)
        assert row["shadow_tier"] == tier
        assert row["shadow_confidence"] == pytest.approx(row["confidence"])
        assert row["shadow_confidence"] == pytest.approx(confidence, abs=1e-6)
        differed += row["shadow_tier"] != row["first_tier"]
    assert differed == 4  # two prompts, each sent twice: live small, shadow medium
    assert 'result="agreed"' in shadowed.metrics
    assert (
        f'cascade_shadow_decisions_total{{policy="simulated",result="differed",'
        f'shadow_version="{version}"}} 4.0' in shadowed.metrics
    )


def test_the_live_answers_and_calls_are_the_same_as_without_a_shadow(
    runs: tuple[Run, Run],
) -> None:
    """Answers, the tier that gave them, and every tier call match a run without the shadow;
    the run without it records no shadow decision."""
    without, shadowed = runs
    plain_rows, plain_calls = ledger(without.database)
    rows, calls = ledger(shadowed.database)
    for a, b in zip(without.answers, shadowed.answers, strict=True):
        assert (a.status_code, b.status_code) == (200, 200)
        assert a.json()["choices"] == b.json()["choices"]
        for header in ("x-cascade-tier", "x-cascade-attempts", "x-cascade-cost-usd"):
            assert a.headers[header] == b.headers[header]
        first, second = a.headers["x-cascade-request-id"], b.headers["x-cascade-request-id"]
        assert plain_calls[first] == calls[second]
        assert plain_rows[first]["first_tier"] == rows[second]["first_tier"]
        assert plain_rows[first]["shadow_tier"] is None


def test_the_report_compares_live_and_shadow(
    runs: tuple[Run, Run], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """cascade report shows the agreement, both tier mixes and the live-to-shadow matrix, as
    text, under "shadow" in --json, and in the HTML page."""
    _, shadowed = runs
    rows, _ = ledger(shadowed.database)
    policy = shadowed.folder / "live.yaml"
    argv = ["report", "--url", shadowed.database, "--since", "all", "--policy", str(policy)]
    capsys.readouterr()  # the proxies' log lines
    assert main([*argv, "--json"]) == 0
    section = json.loads(capsys.readouterr().out)["shadow"]
    (line,) = section["policies"]
    agreed = [r for r in rows.values() if r["first_tier"] == r["shadow_tier"]]
    assert (line["policy"], line["requests"], line["agreed"]) == ("simulated", 24, 20)
    assert line["agreement_rate"] == pytest.approx(20 / 24)
    matrix = {(m["live_tier"], m["shadow_tier"]): m["requests"] for m in line["matrix"]}
    expected: dict[tuple[str, str], int] = {}
    for r in rows.values():
        expected[r["first_tier"], r["shadow_tier"]] = (
            expected.get((r["first_tier"], r["shadow_tier"]), 0) + 1
        )
    assert matrix == expected
    assert matrix[("small", "medium")] == 4
    assert line["where_agreed"]["requests"] == len(agreed)
    assert line["where_agreed"]["cost_usd"] == str(sum(r["cost_usd"] for r in agreed))
    estimate = line["estimate"]  # the live policy never explores: 4 requests out of its reach
    assert (estimate["supported"], estimate["unsupported"], estimate["matched"]) == (False, 4, 20)
    assert "could never have sent them" in estimate["reasons"][0]
    page = tmp_path / "report.html"
    assert main([*argv, "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert "agreed on 20 (83.33%)" in text
    small_row = next(t for t in text.splitlines() if t.strip().startswith("small ") and "  4" in t)
    assert small_row.split()[1:] == [str(matrix.get(("small", "small"), 0)), "4"]
    assert "estimated none: 4 of 24 requests" in text
    assert "Shadow policies" in page.read_text()


def test_a_shadow_with_its_own_scorer_decides_chat_and_batch_requests(
    tmp_path: Path, tiers: Tiers
) -> None:
    """A candidate with another scorer model scores each prompt itself, for the chat route and
    the Batch API runner alike; a request the shadow cannot decide (a workload it lacks) is
    answered all the same, its failure counted."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    _, key = make_key(database, "acme")
    _, admin = make_key(database, "ops", admin=True)
    live = tmp_path / "live.yaml"
    live.write_text(policy_text(tiers.small, tiers.medium, extra_workload="reports: {}"))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(policy_text(tiers.small, tiers.medium, **OTHER_MODEL))
    settings = ServerSettings(
        policies=(str(live),),
        shadows=(str(candidate),),
        database_url=database,
        spool_path=str(tmp_path / "spool"),
        batch_poll_s=0.05,
    )
    auth = {"authorization": f"Bearer {key}"}
    with serving(create_app(settings)) as url:
        answers = send(url, PROMPTS, **auth)
        lines = [chat_line(f"q{n}", prompt) for n, prompt in enumerate(PROMPTS)]
        with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
            uploaded = client.files.create(file=("q.jsonl", jsonl(lines)), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            assert wait_for_end(client, batch.id).status == "completed"
        (unshadowed,) = send(url, [PROMPTS[0]], **auth, **{"x-cascade-workload": "reports"})
        metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {admin}"}).text
    assert all(a.status_code == 200 for a in [*answers, unshadowed])
    rows, _ = ledger(database)
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        batched = {r[0] for r in conn.execute("SELECT id FROM batch_requests")}
    prompts = {a.headers["x-cascade-request-id"]: p for a, p in zip(answers, PROMPTS, strict=True)}
    assert len(batched) == len(PROMPTS)
    decided = [r for r in rows.values() if r["shadow_tier"] is not None]
    assert {r["request_id"] for r in decided} == set(prompts) | batched
    scorer = OnnxScorer("tfidf-lr-v1")
    for request_id, prompt in prompts.items():
        row = rows[request_id]
        assert row["shadow_confidence"] == pytest.approx(scorer.score(prompt), abs=1e-6)
        assert row["shadow_tier"] == thresholds_tier(candidate, prompt)[0]
    live_confidences = {round(r["confidence"], 6) for r in decided}
    assert live_confidences != {round(r["shadow_confidence"], 6) for r in decided}
    assert sorted(rows[i]["shadow_tier"] for i in batched) == sorted(
        rows[i]["shadow_tier"] for i in prompts
    )
    assert rows[unshadowed.headers["x-cascade-request-id"]]["shadow_policy"] is None
    version = load_policy(candidate).fingerprint
    failed = f'{{policy="simulated",result="failed",shadow_version="{version}"}} 1.0'
    assert f"cascade_shadow_decisions_total{failed}" in metrics


def test_a_broken_shadow_file_leaves_live_routing_and_the_last_good_shadow(
    tmp_path: Path, tiers: Tiers
) -> None:
    """Bad YAML written over the shadow is refused and logged; requests are answered and
    carry the last good shadow's decision; the next good file is taken."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    live = tmp_path / "live.yaml"
    live.write_text(policy_text(tiers.small, tiers.medium))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(policy_text(tiers.small, tiers.medium, **STRICTER))
    first = load_policy(candidate).fingerprint
    settings = ServerSettings(
        policies=(str(live),),
        shadows=(str(candidate),),
        database_url=database,
        spool_path=str(tmp_path / "spool"),
        virtual_keys=False,
        reload_interval_s=0.05,
    )
    with serving(create_app(settings)) as url:
        with structlog.testing.capture_logs() as logs:
            candidate.write_text("name: simulated\ntiers: [unclosed\n")
            assert wait_until(lambda: any(e["event"] == "shadow.reload_refused" for e in logs))
        refused = next(e for e in logs if e["event"] == "shadow.reload_refused")
        assert refused["kept_version"] == first
        broken = send(url, PROMPTS[:3])
        candidate.write_text(policy_text(tiers.small, tiers.medium, threshold=1.0))
        second = load_policy(candidate).fingerprint
        with structlog.testing.capture_logs() as logs:
            assert wait_until(lambda: any(e["event"] == "shadow.reloaded" for e in logs))
        fixed = send(url, PROMPTS[:3])
    rows, _ = ledger(database)
    assert all(a.status_code == 200 for a in [*broken, *fixed])
    assert {rows[a.headers["x-cascade-request-id"]]["shadow_policy_version"] for a in broken} == {
        first
    }
    assert {rows[a.headers["x-cascade-request-id"]]["shadow_policy_version"] for a in fixed} == {
        second
    }
    assert {rows[a.headers["x-cascade-request-id"]]["shadow_tier"] for a in fixed} == {"medium"}


def test_a_shadow_of_a_policy_not_served_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cascade serve refuses, before serving, a shadow named after no live policy, and a
    second shadow of one policy, saying which file and what it must be called."""
    live = tmp_path / "live.yaml"
    live.write_text(policy_text("http://127.0.0.1:9", "http://127.0.0.1:9"))
    stray = tmp_path / "stray.yaml"
    stray.write_text(
        policy_text("http://127.0.0.1:9", "http://127.0.0.1:9").replace(
            "name: simulated", "name: elsewhere"
        )
    )
    argv = ["serve", "--policy", str(live), "--no-ledger", "--port", "1"]
    assert main([*argv, "--shadow", str(stray)]) == 2
    said = capsys.readouterr().err
    assert f"--shadow {stray}: it names policy 'elsewhere'" in said
    assert "it serves: simulated" in said
    assert main([*argv, "--shadow", str(live), "--shadow", str(live)]) == 2
    assert "already has a shadow" in capsys.readouterr().err


def test_shadow_rows_on_postgres(
    tmp_path: Path, tiers: Tiers, capsys: pytest.CaptureFixture[str]
) -> None:
    """On Postgres, the shadow's decisions are recorded and read back by the report."""
    with postgres_database() as url:
        run = serve_prompts(tmp_path, tiers, url, STRICTER)
        rows, _ = ledger(url)
        assert {r["shadow_policy"] for r in rows.values()} == {"simulated"}
        assert sum(r["shadow_tier"] != r["first_tier"] for r in rows.values()) == 4
        assert len(run.answers) == len(rows)
        capsys.readouterr()  # the proxy's log lines
        assert main(["report", "--url", url, "--since", "all", "--json"]) == 0
        (line,) = json.loads(capsys.readouterr().out)["shadow"]["policies"]
        assert (line["requests"], line["agreed"]) == (24, 20)
