"""The engines' token counters: read from vLLM's and SGLang's pages, shown live on the proxy's
/metrics with every token the engine served (through this proxy or not), while the ledger and
``cascade report``'s fleet section count this proxy's calls."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import httpx
import pytest

from cascade.cli import report as report_cli
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from cascade.tiers.engine_metrics import EngineKind, parse_engine_metrics
from tests.servers import running_tier, serving, wait_until

PAGES = Path(__file__).parent / "data" / "engine_metrics"

POLICY = """\
name: engine-tokens
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {sim}/v1
    price: {{gpu_usd_per_hour: 2.0, tokens_per_second: 1000}}
    engine: {{metrics: vllm, scrape_interval_s: 0.05, scrape_timeout_s: 1.0}}
"""
QUESTIONS = ("What is 2+2?", "Name a primary colour.", "Describe the water cycle.")


@pytest.mark.parametrize(
    ("page", "engine", "prompt", "generated"),
    [
        # two data-parallel engines: their counters add up
        ("vllm_v1_dp2.txt", "vllm", 1_301_118 + 1_207_455, 402_311 + 377_902),
        ("vllm_v0_legacy.txt", "vllm", 912_004, 288_133),
        # two tensor-parallel ranks of one engine report the same tokens: counted once
        ("sglang_tp2.txt", "sglang", 8_128_902, 7_557_572),
    ],
)
def test_token_counters_read_as_the_engine_counts_them(
    page: str, engine: EngineKind, prompt: int, generated: int
) -> None:
    """Each fixture page gives the engine's prompt and generated token counters."""
    sample = parse_engine_metrics((PAGES / page).read_text(encoding="utf-8"), engine)
    assert (sample.prompt_tokens, sample.generation_tokens) == (prompt, generated)


def test_a_page_without_token_counters_still_reads() -> None:
    """An engine that exports its load but no token counters is read, its counters unknown."""
    page = "vllm:num_requests_running 1.0\nvllm:num_requests_waiting 0.0\n"
    sample = parse_engine_metrics(page, "vllm")
    assert (sample.running, sample.prompt_tokens, sample.generation_tokens) == (1, None, None)


def _counter(metrics: str, name: str) -> float | None:
    match = re.search(rf"^cascade_engine_{name}\{{[^}}]*\}} (\S+)$", metrics, re.MULTILINE)
    return None if match is None else float(match.group(1))


def test_the_engines_count_traffic_the_ledger_does_not_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three requests through the proxy and one straight to the engine: the proxy's /metrics
    shows the engine's counters with all four, the fleet section of ``cascade report`` the
    three that passed through it, token for token as the answers' usage said."""
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    proxied = {"prompt": 0, "completion": 0}
    with running_tier() as sim:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.format(sim=sim), encoding="utf-8")
        settings = ServerSettings(
            policies=(str(policy),), database_url=database, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as proxy:
            for question in QUESTIONS:
                body = {"model": "cascade", "messages": [{"role": "user", "content": question}]}
                answer = httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=30)
                assert answer.status_code == 200, answer.text
                proxied["prompt"] += answer.json()["usage"]["prompt_tokens"]
                proxied["completion"] += answer.json()["usage"]["completion_tokens"]
            direct: dict[str, int] = httpx.post(
                f"{sim}/v1/chat/completions",
                json={"model": "distill-1.5b", "messages": [{"role": "user", "content": "Hi"}]},
                timeout=30,
            ).json()["usage"]
            generated = proxied["completion"] + direct["completion_tokens"]
            prompted = proxied["prompt"] + direct["prompt_tokens"]

            def counted() -> bool:
                metrics = httpx.get(f"{proxy}/metrics").text
                return _counter(metrics, "generation_tokens_total") == generated

            assert wait_until(counted), httpx.get(f"{proxy}/metrics").text
            metrics = httpx.get(f"{proxy}/metrics").text
            assert "# TYPE cascade_engine_generation_tokens_total counter" in metrics
            assert _counter(metrics, "prompt_tokens_total") == prompted
    parser = argparse.ArgumentParser(prog="cascade")
    report_cli.register(parser.add_subparsers())
    ns = parser.parse_args(["report", "--url", database, "--policy", str(policy), "--json"])
    capsys.readouterr()  # the servers' log lines
    assert ns.command(ns) == 0
    report = json.loads(capsys.readouterr().out)
    small, = report["fleet"]["tiers"]  # fmt: skip
    assert small["calls"] == len(QUESTIONS)
    assert small["prompt_tokens"] == proxied["prompt"]
    assert small["completion_tokens"] == proxied["completion"]
    assert small["charged_usd"] == report["total"]["cost_usd"]
    assert float(small["utilization"]) > 0
