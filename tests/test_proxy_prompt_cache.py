"""Provider prompt caching end to end: the proxy marks the stable prefix for an Anthropic tier
(the simulated one, through litellm), the tier writes then reads it, the ledger prices writes
and reads at their own rates, and ``cascade report`` says whether caching paid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from cascade.cli import main
from cascade.ledger.queries import AttemptFacts, read_requests
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from cascade.simulator.engine import Clock
from tests.servers import running_tier, serving, wait_until

TIME_SCALE = 0.001
POLICY = """\
name: cached
tiers:
  - {{name: frontier, model: anthropic/claude-sonnet-4-5, kind: api, endpoint: "{url}",
      api_key_env: CASCADE_SIMULATED_KEY,
      price: {{input_usd_per_mtok: 3, cached_input_usd_per_mtok: 0.30, output_usd_per_mtok: 15}},
      cache: {{markers: {markers}}}}}
"""
HANDBOOK = "\n".join(
    f"Rule {n}: answer questions about ACME's orders accurately; cite section {n} of the "
    "handbook and never invent a price or a date."
    for n in range(90)
)  # about 2,000 tokens: above Claude Sonnet 4.5's 1,024-token minimum
# Sonnet 4.5's prices per token: input, cache read, cache write (5m), output.
INPUT, READ, WRITE, OUTPUT = (Decimal(x) / 1_000_000 for x in ("3", "0.30", "3.75", "15"))


class Setup:
    def __init__(self, url: str, database: str, policy: Path, clock: Clock) -> None:
        self.url, self.database, self.policy, self.clock = url, database, policy, clock
        self.sent = 0

    def ask(self, question: str, system: str = HANDBOOK) -> httpx.Response:
        """One request; its system prompt ends with the time, a line new on every request."""
        self.sent += 1
        when = f"Current time: 2026-12-02T18:{self.sent:02d}:00Z"
        body = {
            "model": "cascade",
            "max_tokens": 64,
            "messages": [
                {"role": "system", "content": f"{system}\n{when}"},
                {"role": "user", "content": question},
            ],
        }
        reply = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply


def _setup(tmp_path: Path, markers: str) -> Iterator[Setup]:
    clock = Clock(TIME_SCALE)
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    with running_tier("frontier", time_scale=TIME_SCALE, clock=clock) as tier:
        policy = tmp_path / "cached.yaml"
        policy.write_text(POLICY.format(url=tier, markers=markers))
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=database,
            spool_path=str(tmp_path / "spool"),
            virtual_keys=False,
        )
        with serving(create_app(settings)) as url:
            yield Setup(url, database, policy, clock)


@pytest.fixture
def marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    monkeypatch.setenv("CASCADE_SIMULATED_KEY", "sk-simulated")
    yield from _setup(tmp_path, "auto")


@pytest.fixture
def unmarked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    monkeypatch.setenv("CASCADE_SIMULATED_KEY", "sk-simulated")
    yield from _setup(tmp_path, "off")


def _attempts(setup: Setup, count: int) -> list[AttemptFacts]:
    facts = read_requests(setup.database, None)
    assert len(facts) == count
    return [f.attempts[0] for f in facts]


def _priced(a: AttemptFacts) -> Decimal:
    plain = a.prompt_tokens - a.cached_tokens - a.cache_write_tokens
    return (
        plain * INPUT
        + a.cached_tokens * READ
        + a.cache_write_tokens * WRITE
        + a.completion_tokens * OUTPUT
    )


def test_the_first_request_writes_the_prefix_and_the_next_ones_read_it(marked: Setup) -> None:
    costs = [
        Decimal(marked.ask(f"Where is order 10{n}?").headers["x-cascade-cost-usd"])
        for n in range(3)
    ]
    marked.clock.advance(6 * 60)  # past the 5-minute lifetime: the next request writes again
    costs.append(Decimal(marked.ask("Where is order 104?").headers["x-cascade-cost-usd"]))
    first, second, third, expired = attempts = _attempts_after_flush(marked, 4)
    assert first.cache_write_tokens > 1024
    assert first.cached_tokens == 0
    # The volatile time line sits after the breakpoint: it never reaches the cached prefix.
    assert second.cached_tokens == third.cached_tokens == first.cache_write_tokens
    assert second.cache_write_tokens == third.cache_write_tokens == 0
    assert expired.cache_write_tokens == first.cache_write_tokens
    for attempt, header in zip(attempts, costs, strict=True):
        assert attempt.cost_usd == _priced(attempt)  # the ledger's price: writes and reads apart
        assert header == attempt.cost_usd.quantize(Decimal("1e-10"))
    assert second.cost_usd < first.cost_usd / 3


def _attempts_after_flush(setup: Setup, count: int) -> list[AttemptFacts]:
    # The ledger writes in batches off the request path: wait until every row is there.
    assert wait_until(lambda: len(read_requests(setup.database, None)) == count)
    return _attempts(setup, count)


def test_without_markers_the_tier_caches_nothing(unmarked: Setup) -> None:
    for n in range(3):
        unmarked.ask(f"Where is order 20{n}?")
    for attempt in _attempts_after_flush(unmarked, 3):
        assert attempt.cached_tokens == attempt.cache_write_tokens == 0
        assert (
            attempt.cost_usd == attempt.prompt_tokens * INPUT + attempt.completion_tokens * OUTPUT
        )


def test_report_says_what_caching_saved_and_names_a_prefix_that_never_repeats(
    marked: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(4):
        marked.ask(f"Where is order 30{n}?")
    # A line the prompt step does not take for volatile, new on every request: every request
    # brings a prefix of its own, written and never read.
    for n in range(3):
        marked.ask(f"Where is order 31{n}?", system=f"{HANDBOOK}\nCustomer mood score: 0.7{n}3")
    _attempts_after_flush(marked, 7)
    capsys.readouterr()  # the servers' log lines so far
    assert main(["report", "--url", marked.database, "--policy", str(marked.policy), "--json"]) == 0
    caching = json.loads(capsys.readouterr().out)["caching"]
    tier = caching["tiers"][0]
    assert tier["tier"] == "frontier"
    assert tier["calls"] == 7
    assert tier["calls_hit"] == 3  # three of the four requests with the shared handbook
    written, read = tier["written_tokens"], tier["read_tokens"]
    # saved = read x ($3 - $0.30)/M; writes = written x ($3.75 - $3)/M
    assert Decimal(tier["saved_usd"]) == read * (INPUT - READ)
    assert Decimal(tier["write_premium_usd"]) == written * (WRITE - INPUT)
    assert tier["break_even_reads_per_write"] == pytest.approx(0.25 / 0.9)
    [single] = caching["single_use_prefixes"]
    assert single["calls_written"] == 3
    assert main(["report", "--url", marked.database, "--policy", str(marked.policy)]) == 0
    text = capsys.readouterr().out
    assert "prompt caching" in text
    assert "3 prefixes on frontier were written once and never read" in text


def test_report_names_a_prefix_whose_entries_expire_before_they_are_read(
    marked: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """One prefix, requested every 6 minutes: each write expires (5-minute lifetime) before the
    next request could read it, so the writes are a loss, and the report says so."""
    for n in range(3):
        marked.ask(f"Where is order 40{n}?")
        marked.clock.advance(6 * 60)
    _attempts_after_flush(marked, 3)
    capsys.readouterr()
    assert main(["report", "--url", marked.database, "--policy", str(marked.policy)]) == 0
    text = capsys.readouterr().out
    assert "was written on 3 calls and read 0.00 times per written token" in text
    assert "try cache.ttl: 1h" in text


def test_streamed_answers_record_writes_and_reads_too(marked: Setup) -> None:
    """The provider's stream usage (litellm's final chunk) carries the cache fields."""
    for n in range(2):
        body = {
            "model": "cascade",
            "max_tokens": 64,
            "stream": True,
            "messages": [
                {"role": "system", "content": HANDBOOK},
                {"role": "user", "content": f"Where is order 50{n}?"},
            ],
        }
        with httpx.stream("POST", f"{marked.url}/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            assert "data: [DONE]" in reply.read().decode()
    first, second = _attempts_after_flush(marked, 2)
    assert first.cache_write_tokens > 1024
    assert second.cached_tokens == first.cache_write_tokens
    assert second.cost_usd == _priced(second)
