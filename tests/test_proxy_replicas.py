"""A tier with several engine replicas behind the real proxy: the same stable prefix reaches the
same replica (the one rendezvous hashing names, whichever proxy asks), so its prefix cache
hits; different prefixes spread; a dead replica leaves the others serving."""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from cascade.core.prompt import prepare_prompt
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from cascade.tiers.replicas import rendezvous
from tests.servers import running_tier, serving

POLICY = """\
name: replicas
tiers:
  - name: medium
    model: distill-1.5b
    kind: self_hosted
    replicas: {replicas}
    routing: {routing}
    price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}
"""
# Nine apps, each with its own system prompt of a few hundred tokens.
PROMPTS = [
    "\n".join(
        f"App {app}, rule {n}: answer questions about orders, refunds and shipping; cite "
        f"section {n} of handbook {app} and never invent a price."
        for n in range(20)
    )
    for app in range(9)
]
QUESTIONS = ("Where is my order?", "How long does a refund take?", "Do you ship to Norway?")
_SUCCESS = re.compile(r"^vllm:request_success_total\{[^}]*\} (\S+)$", re.MULTILINE)


def _asked(system: str, question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def _messages(app: int, question: str) -> list[dict[str, Any]]:
    return _asked(PROMPTS[app], question)


def _served(url: str) -> int:
    """Requests a simulated replica has finished (its /metrics)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(int(float(n)) for n in _SUCCESS.findall(text))


def _closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def engines() -> Iterator[list[str]]:
    """Three simulated 1.5B replicas (root URLs)."""
    with ExitStack() as stack:
        yield [stack.enter_context(running_tier("1.5b", time_scale=0.001)) for _ in range(3)]


def _proxy(
    tmp_path: Path, replicas: list[str], routing: str = "prefix"
) -> AbstractContextManager[str]:
    policy = tmp_path / f"replicas-{routing}.yaml"
    listed = json.dumps([f"{url}/v1" for url in replicas])
    policy.write_text(POLICY.format(replicas=listed, routing=routing))
    return serving(create_app(ServerSettings(policies=(str(policy),))))


def _ask(proxy: str, messages: list[dict[str, Any]], *, stream: bool = False) -> int:
    """One request through the proxy, answered by the tier: its prompt tokens read from the
    cache."""
    body: dict[str, Any] = {"model": "cascade", "messages": messages}
    if not stream:
        reply = httpx.post(f"{proxy}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-cascade-tier"] == "medium"
        usage = reply.json()["usage"]
    else:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{proxy}/v1/chat/completions", json=body, timeout=30) as sse:
            assert sse.status_code == 200
            events = [line[6:] for line in sse.iter_lines() if line.startswith("data: {")]
        usage = json.loads(events[-1])["usage"]
    cached: int = usage["prompt_tokens_details"]["cached_tokens"]
    return cached


def _expected(replicas: list[str], live: list[str]) -> Counter[str]:
    """Requests per replica root when each app's three requests go where rendezvous hashing of
    its prefix hash names, among the ``live`` replicas."""
    urls = [f"{url}/v1" for url in live]
    counts: Counter[str] = Counter()
    for app in range(len(PROMPTS)):
        key = prepare_prompt(_messages(app, QUESTIONS[0])).prefix_hash
        counts[rendezvous(key, urls)[0].removesuffix("/v1")] += len(QUESTIONS)
    return counts


def test_the_same_prefix_reaches_the_same_replica(engines: list[str], tmp_path: Path) -> None:
    """Each app's requests all reach the replica its prefix hash names (any proxy would name
    it), so every repeat reads the system prompt from that replica's cache; the apps spread
    over the replicas."""
    before = {url: _served(url) for url in engines}
    with _proxy(tmp_path, engines) as proxy:
        hits = [
            _ask(proxy, _messages(app, q)) > 0 for app in range(len(PROMPTS)) for q in QUESTIONS
        ]
    served = Counter({url: _served(url) - before[url] for url in engines})
    assert served == _expected(engines, engines)
    assert sum(1 for count in served.values() if count) >= 2
    assert hits == [False, True, True] * len(PROMPTS)


def test_round_robin_scatters_a_prefix_and_misses_the_cache(
    engines: list[str], tmp_path: Path
) -> None:
    """With routing round_robin, one app's three requests reach three replicas: new prompts
    miss every replica's cache, where prefix routing would have hit twice."""
    fresh = [f"{prompt}\nRound robin." for prompt in PROMPTS[:3]]
    before = {url: _served(url) for url in engines}
    with _proxy(tmp_path, engines, "round_robin") as proxy:
        cached = [_ask(proxy, _asked(prompt, q)) for prompt in fresh for q in QUESTIONS]
    assert cached == [0] * 9
    assert [_served(url) - before[url] for url in engines] == [3, 3, 3]


def test_streamed_requests_keep_their_replica(engines: list[str], tmp_path: Path) -> None:
    """Streams are routed alike: the repeats of one prefix stream from the replica that cached
    it on the first."""
    prompt = f"{PROMPTS[0]}\nStreamed."
    key = prepare_prompt(_asked(prompt, QUESTIONS[0])).prefix_hash
    home = rendezvous(key, [f"{url}/v1" for url in engines])[0].removesuffix("/v1")
    before = {url: _served(url) for url in engines}
    with _proxy(tmp_path, engines) as proxy:
        cached = [_ask(proxy, _asked(prompt, q), stream=True) for q in QUESTIONS]
    assert [n > 0 for n in cached] == [False, True, True]
    assert {url: _served(url) - before[url] for url in engines} == {
        url: len(QUESTIONS) if url == home else 0 for url in engines
    }


def test_a_dead_replica_leaves_the_others_serving(engines: list[str], tmp_path: Path) -> None:
    """With one of three replicas refusing connections every request is still answered by the
    tier; the dead replica's prefixes move to their next replica and no other prefix moves."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    replicas = [dead, *engines[:2]]
    before = {url: _served(url) for url in engines[:2]}
    with _proxy(tmp_path, replicas) as proxy:
        for app in range(len(PROMPTS)):
            for question in QUESTIONS:
                _ask(proxy, _messages(app, question))  # from the tier: no spill, no error
    served = {url: _served(url) - before[url] for url in engines[:2]}
    expected = _expected(replicas, engines[:2])
    assert served == {url: expected[url] for url in engines[:2]}
    assert sum(served.values()) == len(PROMPTS) * len(QUESTIONS)
