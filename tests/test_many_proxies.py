"""Many proxies, one truth: two ``cascade serve`` processes in front of the same engine replicas
and the same Postgres, as a platform runs several proxy replicas behind one Service.

The proxies never talk to each other. A stable prefix reaches the same engine replica whichever
proxy sends it (rendezvous hashing), so the second proxy's first request reads the prefix the
first proxy's request left in that replica's cache; a proxy with nothing of its own in flight
spills when the engines' exported queues are full, and comes back once they drain; and the
shared ledger holds every request of both exactly once after both stop gracefully.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cascade.simulator.engine import Clock
from tests.servers import running_tier, wait_until
from tests.test_drain import _ledger
from tests.test_proxy_ledger import postgres_database
from tests.upstreams import closed_port

AFFINITY = """\
name: affinity
tiers:
  - name: medium
    model: distill-1.5b
    kind: self_hosted
    replicas: {replicas}
    routing: prefix
    threshold: 0.0
    price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}
"""
SPILL = """\
name: spill
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    replicas: {replicas}
    routing: least_loaded
    threshold: 0.0
    price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}
    overflow: big
    engine: {{metrics: vllm, scrape_interval_s: 0.2, scrape_timeout_s: 2.0, stale_after_s: 30,
              max_waiting: {max_waiting}}}
  - name: big
    model: distill-7b
    kind: self_hosted
    endpoint: {big}/v1
    price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}
"""
MAX_WAITING = 2
# Held replicas run one sequence at a time, 3,000 times slower than real time: a step is ~0.7 s
# and the story below (46 tokens) ~32 s, so what they hold stays held until the test moves their
# clocks on.
HELD_SCALE = 3000.0
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
# A handful of apps, each with its own system prompt of a few hundred tokens.
PROMPTS = [
    "\n".join(
        f"Shop {app}, rule {n}: answer questions about orders, refunds and delivery; quote "
        f"paragraph {n} of policy book {app} and never promise a date."
        for n in range(20)
    )
    for app in range(4)
]
QUESTIONS = ("Where is my parcel?", "Can I return shoes?", "Do you ship to Chile?", "Why?")


@dataclass(frozen=True)
class Cluster:
    """Two proxies (``a``, ``b``: base URLs) and the engines both route to."""

    a: str
    b: str
    servers: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]
    logs: tuple[Path, Path]
    shared: list[str]
    """Replicas of the affinity policy's tier (root URLs), quick."""
    held: list[str]
    """Replicas of the spill policy's tier, one sequence each, slow until their clocks move."""
    clocks: list[Clock]
    database: str
    http: httpx.Client
    """One client for every call the test makes (a new one per call costs ~30 ms of TLS setup)."""

    def stop(self) -> list[int | None]:
        """SIGTERM to both proxies; their exit codes (None: still running after a minute)."""
        for server in self.servers:
            server.send_signal(signal.SIGTERM)
        return [_exit_code(server) for server in self.servers]


def _exit_code(server: subprocess.Popen[bytes]) -> int | None:
    try:
        return server.wait(60)
    except subprocess.TimeoutExpired:
        return None


def _serve(
    policies: Sequence[Path], database: str, folder: Path
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """One ``cascade serve`` on a port of its own, with its own spool and log."""
    folder.mkdir()
    port, log = closed_port(), folder / "serve.log"
    command = [sys.executable, "-m", "cascade", "serve", "--port", str(port)]
    command += [arg for policy in policies for arg in ("--policy", str(policy))]
    command += ["--database-url", database, "--spool", str(folder / "ledger.spool")]
    command += ["--drain-delay", "0", "--log-level", "info"]
    with log.open("wb") as stderr:
        return subprocess.Popen(command, stderr=stderr), f"http://127.0.0.1:{port}", log


def _ready(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def _cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Simulated replicas, a fresh Postgres database, and two proxies serving both policies
    from it, ready; proxies a test left running are stopped (a second signal cuts them)."""
    clocks = [Clock(HELD_SCALE) for _ in range(2)]
    with ExitStack() as stack:
        database = stack.enter_context(postgres_database())
        shared = [stack.enter_context(running_tier("1.5b", time_scale=0.001)) for _ in range(3)]
        held = [
            stack.enter_context(
                running_tier("1.5b", time_scale=HELD_SCALE, max_concurrency=1, clock=clock)
            )
            for clock in clocks
        ]
        big = stack.enter_context(running_tier("7b", time_scale=0.001))
        http = stack.enter_context(httpx.Client(timeout=120))
        affinity, spill = tmp_path / "affinity.yaml", tmp_path / "spill.yaml"
        affinity.write_text(AFFINITY.format(replicas=_listed(shared)))
        spill.write_text(SPILL.format(replicas=_listed(held), big=big, max_waiting=MAX_WAITING))
        (a, a_url, a_log), (b, b_url, b_log) = (
            _serve([affinity, spill], database, tmp_path / name) for name in ("a", "b")
        )
        stack.callback(_cut, (a, b))
        cluster = Cluster(
            a_url, b_url, (a, b), (a_log, b_log), shared, held, clocks, database, http
        )
        for server, url, log in ((a, a_url, a_log), (b, b_url, b_log)):
            assert wait_until(lambda: _ready(http, url) or server.poll() is not None, 60)  # noqa: B023
            assert server.poll() is None, log.read_text()
        yield cluster


def _listed(roots: list[str]) -> str:
    return json.dumps([f"{url}/v1" for url in roots])


def _cut(servers: Sequence[subprocess.Popen[bytes]]) -> None:
    for server in servers:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.send_signal(signal.SIGTERM)
            server.wait(60)


@contextmanager
def _released(clocks: list[Clock]) -> Iterator[None]:
    """Let held replicas run as fast as they can: their clocks keep jumping a minute ahead,
    so each sequence waits at most one more engine step (~0.7 s)."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.02):
            for clock in clocks:
                clock.advance(60.0)

    thread = threading.Thread(target=run, name="fast-forward", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class Answer:
    """What a client saw."""

    request_id: str
    tier: str
    attempts: str | None
    spilled_from: str | None
    cached_tokens: int


def _ask(
    cluster: Cluster,
    proxy: str,
    messages: list[dict[str, Any]],
    *,
    policy: str,
    stream: bool = False,
) -> Answer:
    """One chat completion through ``proxy`` under ``policy``; it must succeed."""
    body: dict[str, Any] = {"model": f"cascade/{policy}", "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    with cluster.http.stream("POST", f"{proxy}/v1/chat/completions", json=body) as reply:
        reply.read()
        assert reply.status_code == 200, reply.text
    if stream:
        events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: {")]
        usage = json.loads(events[-1])["usage"]
    else:
        usage = reply.json()["usage"]
    h = reply.headers
    return Answer(
        h["x-cascade-request-id"],
        h["x-cascade-tier"],
        h.get("x-cascade-attempts"),
        h.get("x-cascade-spilled-from"),
        usage["prompt_tokens_details"]["cached_tokens"],
    )


def _gauge(cluster: Cluster, replica: str, name: str) -> int:
    """A number a simulated replica exports on its ``/metrics`` (summed over its labels)."""
    text = cluster.http.get(f"{replica}/metrics").text
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(name))


def _served(cluster: Cluster, replicas: list[str]) -> list[int]:
    """Requests each replica has finished."""
    return [_gauge(cluster, url, "vllm:request_success_total") for url in replicas]


def _engine_states(cluster: Cluster, proxy: str) -> list[str]:
    """Each held replica's state as ``proxy``'s /readyz reports it (the spill policy's tier)."""
    engines = cluster.http.get(f"{proxy}/readyz").json().get("engines", {}).get("small", {})
    return [entry["state"] for entry in engines.values()]


def _in_flight(cluster: Cluster, proxy: str) -> int:
    """The proxy's own count of calls in flight to the spill policy's tier (its /metrics; no
    line until it has called the tier)."""
    text = cluster.http.get(f"{proxy}/metrics").text
    prefix = 'cascade_in_flight{tier="small"} '
    counts = [
        int(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)
    ]
    return sum(counts)


def test_the_same_prefix_reaches_the_same_replica_from_either_proxy(tmp_path: Path) -> None:
    """Each app's requests, sent alternately through two proxies that never talk, all reach one
    engine replica; so the second proxy's first request for an app already reads the system
    prompt the first proxy's request left in that replica's cache."""
    with _cluster(tmp_path) as cluster:
        homes: dict[int, set[int]] = {app: set() for app in range(len(PROMPTS))}
        cached: dict[int, list[int]] = {app: [] for app in range(len(PROMPTS))}
        for turn, question in enumerate(QUESTIONS):
            for app, prompt in enumerate(PROMPTS):
                # Apps 0 and 2 start on proxy A, apps 1 and 3 on B; then they alternate.
                proxy = (cluster.a, cluster.b)[(app + turn) % 2]
                messages = [
                    {"role": "system", "content": prompt},
                    {"role": "user", "content": question},
                ]
                before = _served(cluster, cluster.shared)
                answer = _ask(cluster, proxy, messages, policy="affinity")
                after = _served(cluster, cluster.shared)
                homes[app] |= {n for n, count in enumerate(after) if count > before[n]}
                cached[app].append(answer.cached_tokens)

    assert all(len(replicas) == 1 for replicas in homes.values()), homes
    for app, tokens in cached.items():
        assert tokens[0] == 0, (app, tokens)  # the first request of an app writes its prefix
        assert all(n > 0 for n in tokens[1:]), (app, tokens)  # from either proxy, it hits


def test_a_proxy_with_nothing_in_flight_spills_on_the_engines_word(tmp_path: Path) -> None:
    """Proxy A's clients fill both engine replicas until each exports max_waiting queued
    requests; proxy B, which has no call of its own in flight, sends its request straight to the
    overflow tier (and so does A). Once the engines drain, B's requests return to them."""
    with _cluster(tmp_path) as cluster:
        pool = ThreadPoolExecutor(8)
        try:
            load, from_b, from_a = _spill_through_both(cluster, pool)
            with _released(cluster.clocks):
                loaded = [future.result(120) for future in load]
                assert wait_until(lambda: _engine_states(cluster, cluster.b) == ["ok", "ok"], 30)
                back = _ask(cluster, cluster.b, STORY, policy="spill")
        finally:
            with _released(cluster.clocks):  # whatever happened, what the engines hold ends
                pool.shutdown()

    for spilled in (from_b, from_a):
        assert (spilled.tier, spilled.attempts, spilled.spilled_from) == ("big", "big:ok", "small")
    assert {(answer.tier, answer.attempts) for answer in loaded} == {("small", "small:ok")}
    assert (back.tier, back.attempts, back.spilled_from) == ("small", "small:ok", None)


def _spill_through_both(
    cluster: Cluster, pool: ThreadPoolExecutor
) -> tuple[list[Future[Answer]], Answer, Answer]:
    """Fill the held engines through proxy A, then ask B and A once each: A's load (still
    held), and what B and A answered."""
    ok, full = ["ok"] * len(cluster.held), ["saturated"] * len(cluster.held)
    assert wait_until(lambda: _engine_states(cluster, cluster.b) == ok, 30)
    load: list[Future[Answer]] = []
    for n in range((1 + MAX_WAITING) * len(cluster.held)):  # each: one running, the rest queued
        load.append(pool.submit(_ask, cluster, cluster.a, STORY, policy="spill"))
        # One at a time, each seen by an engine before the next: A spreads them evenly.
        assert wait_until(lambda: _busy(cluster) == n + 1, 30)  # noqa: B023
    waiting = [_gauge(cluster, url, "vllm:num_requests_waiting") for url in cluster.held]
    assert waiting == [MAX_WAITING] * len(cluster.held)
    assert wait_until(lambda: _engine_states(cluster, cluster.b) == full, 30)
    own = (_in_flight(cluster, cluster.a), _in_flight(cluster, cluster.b))
    assert own == (len(load), 0)  # B has nothing of its own in flight
    served = sum(_served(cluster, cluster.held))
    from_b = _ask(cluster, cluster.b, STORY, policy="spill")
    assert wait_until(lambda: _engine_states(cluster, cluster.a) == full, 30)
    from_a = _ask(cluster, cluster.a, STORY, policy="spill")
    # Neither reached an engine: what they hold is all still there, none of it finished.
    assert (_busy(cluster), sum(_served(cluster, cluster.held))) == (len(load), served)
    return load, from_b, from_a


def _busy(cluster: Cluster) -> int:
    """Requests the held replicas are running or queueing, by their /metrics."""
    names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    return sum(_gauge(cluster, url, name) for url in cluster.held for name in names)


def test_the_shared_ledger_holds_every_request_of_both_exactly_once(tmp_path: Path) -> None:
    """Both proxies answer concurrent clients (half of them streaming) and are stopped with
    SIGTERM: both exit 0, and the one Postgres ledger holds exactly the request ids the clients
    were given, each once, with the attempts each answer reported."""
    per_proxy = 8
    with _cluster(tmp_path) as cluster, ThreadPoolExecutor(2 * per_proxy) as pool:
        asked = [
            pool.submit(
                _ask,
                cluster,
                proxy,
                [
                    {"role": "system", "content": PROMPTS[n % len(PROMPTS)]},
                    {"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]},
                ],
                policy="affinity",
                stream=n % 2 == 1,
            )
            for n in range(per_proxy)
            for proxy in (cluster.a, cluster.b)
        ]
        answers = [future.result(120) for future in asked]
        codes = cluster.stop()
        logs = [log.read_text() for log in cluster.logs]
        requests, attempts = _ledger(cluster.database)

    assert codes == [0, 0], logs
    ids = [answer.request_id for answer in answers]
    assert len(set(ids)) == 2 * per_proxy
    assert sorted(str(row["request_id"]) for row in requests) == sorted(ids)
    assert {(row["http_status"], row["final_tier"]) for row in requests} == {(200, "medium")}
    assert sum(bool(row["stream"]) for row in requests) == per_proxy
    recorded: dict[str, list[tuple[int, str]]] = {request_id: [] for request_id in ids}
    for row in attempts:
        recorded[str(row["request_id"])].append(
            (int(str(row["seq"])), f"{row['tier']}:{row['outcome']}")
        )
    # Each answer's x-cascade-attempts, streams' too, is what the ledger holds for its id.
    told = {answer.request_id: answer.attempts for answer in answers}
    assert {rid: ",".join(a for _, a in sorted(rows)) for rid, rows in recorded.items()} == told
    assert set(told.values()) == {"medium:ok"}
