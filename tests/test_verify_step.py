"""The verify step in the proxy: evidence (samples, a witness tier), the verifier's verdict,
escalation on a low confidence, and every evidence call in the ledger with its role and cost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascade.cli import main
from cascade.errors import PolicyError
from cascade.ledger import create_engine
from cascade.ledger.models import Attempt
from cascade.policy import parse_policy
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving, wait_until

QUESTION = [{"role": "user", "content": "What is 2+2?"}]

POLICY = """\
name: verifytest
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{input_usd_per_mtok: 1, output_usd_per_mtok: 1}}
    verify: {verify}
  - name: medium
    model: distill-7b
    kind: self_hosted
    endpoint: {medium}/v1
    price: {{input_usd_per_mtok: 2, output_usd_per_mtok: 2}}
  - name: big
    model: frontier-x
    kind: self_hosted
    endpoint: {big}/v1
    price: {{input_usd_per_mtok: 10, output_usd_per_mtok: 30}}
escalation:
  streaming: {streaming}
"""


@dataclass
class AnsweringTier:
    """A tier that answers with ``answers`` (one per choice asked for with ``n``, cycling)."""

    name: str
    answers: list[str] = field(default_factory=lambda: ["The answer is 4."])
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if self.status != 200:
            return JSONResponse({"error": {"message": "busy"}}, status_code=self.status)
        n = int(body.get("n") or 1)
        texts = [self.answers[i % len(self.answers)] for i in range(n)]
        if body.get("stream"):
            return StreamingResponse(_sse(texts[0]), media_type="text/event-stream")
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
        usage = {"prompt_tokens": 100, "completion_tokens": 10 * n}
        return JSONResponse(
            {
                "id": f"chatcmpl-{self.name}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body.get("model"),
                "choices": choices,
                "usage": usage,
            }
        )


async def _sse(text: str) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    for choice in (
        {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "stop"},
    ):
        yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()
    yield b"data: [DONE]\n\n"


@dataclass
class Stack:
    url: str
    small: AnsweringTier
    medium: AnsweringTier
    big: AnsweringTier
    database: str

    def ask(self, messages: list[dict[str, str]] = QUESTION) -> httpx.Response:
        """A request pinned to the small tier (where the verify block is); asserts a 200."""
        payload = {"model": "small", "messages": messages}
        response = httpx.post(f"{self.url}/v1/chat/completions", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        return response

    def attempts(self, count: int = 1) -> list[dict[str, Any]]:
        """The attempts rows, once at least ``count`` are written (the ledger writes behind)."""
        wait_until(lambda: len(self._rows()) >= count)
        return self._rows()

    def _rows(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            engine = create_engine(self.database)
            try:
                async with engine.connect() as conn:
                    rows = await conn.execute(select(Attempt.__table__).order_by(Attempt.id))
                    return [dict(r._mapping) for r in rows]
            finally:
                await engine.dispose()

        return asyncio.run(read())


@pytest.fixture
def stack_for(tmp_path: Path) -> Iterator[Any]:
    """``stack_for(verify, streaming="buffer")`` starts three tiers and the proxy."""
    started: list[Any] = []

    def start(verify: str, streaming: str = "buffer") -> Stack:
        exits = ExitStack()
        started.append(exits)
        tiers = [AnsweringTier(n) for n in ("small", "medium", "big")]
        urls = [exits.enter_context(serving(t.app())) for t in tiers]
        policy = tmp_path / "verifytest.yaml"
        policy.write_text(
            POLICY.format(
                small=urls[0], medium=urls[1], big=urls[2], verify=verify, streaming=streaming
            )
        )
        database = f"sqlite:///{tmp_path / 'ledger.db'}"
        settings = ServerSettings(
            policies=(str(policy),),
            database_url=database,
            spool_path=str(tmp_path / "ledger.spool"),
            batch_scoring="never",
        )
        url = exits.enter_context(serving(create_app(settings)))
        small, medium, big = tiers
        return Stack(url, small, medium, big, database)

    yield start
    for exits in reversed(started):
        exits.close()


def test_agreeing_samples_keep_the_cheap_answer_and_their_cost_is_recorded(stack_for: Any) -> None:
    stack = stack_for("{samples: 3, threshold: 0.5}")
    response = stack.ask()
    body = response.json()
    assert response.headers["x-cascade-tier"] == "small"
    assert float(response.headers["x-cascade-verify-confidence"]) >= 0.5
    assert response.headers["x-cascade-attempts"] == "small:sample,small:ok(verify)"
    # One call with n=3; the client sees one answer and the candidate's share of the usage.
    assert stack.small.requests[-1]["n"] == 3
    assert len(body["choices"]) == 1
    assert body["choices"][0]["index"] == 0
    assert body["usage"]["completion_tokens"] == 10
    evidence = Decimal(response.headers["x-cascade-evidence-cost-usd"])
    assert evidence > 0
    # The ledger has the samples as their own attempt, and the two attempts sum to the call.
    rows = stack.attempts(2)
    assert [(r["tier"], r["role"], r["outcome"]) for r in rows] == [
        ("small", "sample", "ok"),
        ("small", "primary", "ok"),
    ]
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (0, 20)
    assert (rows[1]["prompt_tokens"], rows[1]["completion_tokens"]) == (100, 10)
    assert rows[1]["verify_confidence"] == pytest.approx(
        float(response.headers["x-cascade-verify-confidence"]), abs=1e-4
    )
    assert rows[0]["verify_confidence"] is None


def test_disagreeing_samples_escalate_to_the_next_tier(stack_for: Any) -> None:
    stack = stack_for("{samples: 3, threshold: 0.5}")
    stack.small.answers = ["The answer is 5.", "The answer is 4.", "The answer is 7."]
    response = stack.ask()
    assert response.headers["x-cascade-tier"] == "medium"
    assert response.headers["x-cascade-attempts"] == "small:sample,small:rejected(verify),medium:ok"
    assert float(response.headers["x-cascade-verify-confidence"]) < 0.5
    assert response.json()["choices"][0]["message"]["content"] == "The answer is 4."
    rejected = [r for r in stack.attempts(3) if r["outcome"] == "rejected"]
    assert len(rejected) == 1
    assert rejected[0]["reason"].startswith("verify: confidence ")
    assert "below 0.5" in rejected[0]["reason"]
    assert "n" not in stack.medium.requests[-1]  # the medium tier has no verify block


def test_majority_answer_is_returned_when_samples_say_so(stack_for: Any) -> None:
    stack = stack_for("{samples: 3, threshold: 0.2, answer: majority}")
    stack.small.answers = ["The answer is 5.", "The answer is 4.", "The answer is 4."]
    response = stack.ask()
    assert response.json()["choices"][0]["message"]["content"] == "The answer is 4."
    assert response.headers["x-cascade-tier"] == "small"


def test_a_witness_tier_answers_in_parallel_and_is_an_attempt(stack_for: Any) -> None:
    stack = stack_for("{witness: medium, threshold: 0.5}")
    response = stack.ask()
    assert response.headers["x-cascade-tier"] == "small"
    assert response.headers["x-cascade-attempts"] == "medium:witness,small:ok(verify)"
    assert len(stack.medium.requests) == 1
    assert stack.medium.requests[0]["messages"] == stack.small.requests[0]["messages"]
    witness = next(r for r in stack.attempts(2) if r["role"] == "witness")
    assert (witness["tier"], witness["outcome"]) == ("medium", "ok")
    assert witness["cost_usd"] > 0


def test_a_witness_that_disagrees_sends_the_request_up(stack_for: Any) -> None:
    stack = stack_for("{witness: medium, threshold: 0.5}")
    stack.medium.answers = ["The answer is 9."]
    response = stack.ask()
    assert response.headers["x-cascade-tier"] == "medium"  # the next tier, called for real
    assert (
        response.headers["x-cascade-attempts"] == "medium:witness,small:rejected(verify),medium:ok"
    )


@pytest.mark.parametrize(("missing", "tier"), [("accept", "small"), ("escalate", "medium")])
def test_a_failed_witness_follows_on_missing_evidence(
    stack_for: Any, missing: str, tier: str
) -> None:
    stack = stack_for(f"{{witness: big, threshold: 0.5, on_missing_evidence: {missing}}}")
    stack.big.status = 503
    response = stack.ask()
    assert response.headers["x-cascade-tier"] == tier
    assert "x-cascade-verify-confidence" not in response.headers
    witness = next(r for r in stack.attempts(2) if r["role"] == "witness")
    assert (witness["tier"], witness["outcome"]) == ("big", "error")


def test_buffered_streams_are_verified_and_passthrough_streams_are_not(stack_for: Any) -> None:
    stack = stack_for("{samples: 3, threshold: 0.5}")
    stack.small.answers = ["The answer is 5.", "The answer is 4.", "The answer is 7."]
    with httpx.stream(
        "POST",
        f"{stack.url}/v1/chat/completions",
        json={"model": "small", "messages": QUESTION, "stream": True},
        timeout=30,
    ) as response:
        text = "".join(response.iter_text())
    assert response.status_code == 200
    assert response.headers["x-cascade-tier"] == "medium"
    assert "The answer is 4." in text


def test_passthrough_streams_are_relayed_unverified(stack_for: Any) -> None:
    stack = stack_for("{samples: 3, threshold: 0.5}", streaming="passthrough")
    with httpx.stream(
        "POST",
        f"{stack.url}/v1/chat/completions",
        json={"model": "small", "messages": QUESTION, "stream": True},
        timeout=30,
    ) as response:
        response.read()
    assert response.status_code == 200
    assert response.headers["x-cascade-tier"] == "small"
    assert "n" not in stack.small.requests[-1]


@pytest.mark.parametrize(
    ("verify", "message"),
    [
        ("{threshold: 0.5}", "give samples"),
        ("{witness: nowhere}", "unknown tier 'nowhere'"),
        ("{witness: small}", "cannot witness itself"),
        ("{witness: medium, answer: majority}", "set samples"),
        ("{samples: 1}", "greater than or equal to 2"),
    ],
)
def test_bad_verify_blocks_are_refused_with_the_reason(verify: str, message: str) -> None:
    text = POLICY.format(
        small="http://a", medium="http://b", big="http://c", verify=verify, streaming="buffer"
    )
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, source="verifytest.yaml")


def test_the_strongest_tier_cannot_verify() -> None:
    text = POLICY.format(
        small="http://a", medium="http://b", big="http://c", verify="null", streaming="buffer"
    )
    price = "    price: {input_usd_per_mtok: 10, output_usd_per_mtok: 30}\n"
    text = text.replace(price, price + "    verify: {samples: 2}\n")
    with pytest.raises(PolicyError, match="strongest tier"):
        parse_policy(text, source="verifytest.yaml")


def test_the_report_shows_what_the_verify_step_did(
    stack_for: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = stack_for("{samples: 3, threshold: 0.5}")
    payload = {"model": "small", "messages": QUESTION}
    url = f"{stack.url}/v1/chat/completions"
    assert httpx.post(url, json=payload, timeout=30).status_code == 200  # kept
    stack.small.answers = ["The answer is 5.", "The answer is 4.", "The answer is 7."]
    assert httpx.post(url, json=payload, timeout=30).status_code == 200  # escalated
    stack.attempts(5)
    policy = tmp_path / "verifytest.yaml"
    assert main(["report", "--url", stack.database, "--since", "all", "--policy", str(policy)]) == 0
    total = capsys.readouterr().out.split("== total ==")[1]
    line = next(x for x in total.splitlines() if "verify step" in x)
    assert "verified 100.00% of requests" in line
    assert "escalated by the verifier 50.00%" in line
    assert "evidence cost 0.00004" in line  # 2 samples x 20 tokens at $1/M, twice


CODE_QUESTION = [
    {"role": "user", "content": "Write a Python function add_one(x) that returns x plus one."}
]
RIGHT = "```python\ndef add_one(x):\n    return x + 1\n```"
ALSO_RIGHT = "Here you go:\n```python\ndef add_one(x):\n    y = x\n    return 1 + y\n```"
WRONG = "```python\ndef add_one(x):\n    return x + 2\n```"


@pytest.mark.parametrize(("witness", "tier"), [(ALSO_RIGHT, "small"), (WRONG, "medium")])
def test_code_answers_are_judged_by_what_the_code_does(
    stack_for: Any, witness: str, tier: str
) -> None:
    """Two differently written functions that behave alike agree; a function that returns
    something else does not, although it reads almost the same."""
    stack = stack_for("{witness: medium, threshold: 0.5}")
    stack.small.answers = [RIGHT]
    stack.medium.answers = [witness]
    response = stack.ask(CODE_QUESTION)
    assert response.headers["x-cascade-tier"] == tier


@pytest.mark.parametrize("missing", ["accept", "escalate"])
def test_open_ended_answers_are_not_judged_on_agreement(stack_for: Any, missing: str) -> None:
    """Two free-text replies that say the same thing in other words would read as a
    disagreement; the verifier was never measured on such answers, so the answer is treated as
    having no evidence (kept unverified, or escalated, as the policy says)."""
    stack = stack_for(f"{{witness: medium, threshold: 0.5, on_missing_evidence: {missing}}}")
    stack.small.answers = ["The capital of France is Paris."]
    stack.medium.answers = ["Paris is the capital of France."]
    response = stack.ask([{"role": "user", "content": "Capital of France?"}])
    assert response.headers["x-cascade-tier"] == ("small" if missing == "accept" else "medium")
    assert "x-cascade-verify-confidence" not in response.headers
    primary = next(r for r in stack.attempts(2) if r["role"] == "primary")
    assert "no final answer the verifier can compare" in primary["reason"]
