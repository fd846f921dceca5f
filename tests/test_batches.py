"""The Batch API through the official OpenAI SDK, against the real proxy on simulated tiers and
an SQLite ledger: upload, create, poll, download; and what it refuses."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import running_tier, serving
from tests.test_keys import make_key

POLICY = """\
name: simulated
tiers:
  - {{name: small, model: distill-1.5b, kind: self_hosted, endpoint: "{small}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 32000}}, overflow: medium,
      threshold: 0.818}}
  - {{name: medium, model: distill-7b, kind: self_hosted, endpoint: "{medium}/v1",
      price: {{gpu_usd_per_hour: 2.3, tokens_per_second: 14500}}}}
escalation:
  checks: [length, empty]
"""
QUESTIONS = ["What is 7 times 8?", "Name a prime above 10.", "What is the capital of France?"]


def jsonl(lines: Sequence[object]) -> bytes:
    """Lines of JSON, one a line."""
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, question: str, **changes: object) -> dict[str, object]:
    """One batch input line asking ``question``."""
    body = {"model": "cascade", "messages": [{"role": "user", "content": question}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return line | changes


@dataclass
class BatchProxy:
    url: str
    database: Path
    acme: str
    globex: str

    def sdk(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def ledger_ids(self) -> list[str]:
        with sqlite3.connect(self.database) as conn:
            return [row[0] for row in conn.execute("SELECT request_id FROM requests")]


def policy_file(tmp_path: Path, small: str, medium: str) -> Path:
    """The simulated policy, pointed at running tiers."""
    path = tmp_path / "simulated.yaml"
    path.write_text(POLICY.format(small=small, medium=medium))
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchProxy]:
    """Simulated tiers behind a proxy with an SQLite ledger and two tenants' keys."""
    tmp_path = tmp_path_factory.mktemp("batches")
    database = tmp_path / "ledger.db"
    url = f"sqlite:///{database}"
    _, acme = make_key(url, "acme")
    _, globex = make_key(url, "globex")
    with (
        running_tier("1.5b", time_scale=0.001) as small,
        running_tier("7b", time_scale=0.001) as medium,
    ):
        settings = ServerSettings(
            policies=(str(policy_file(tmp_path, small, medium)),),
            database_url=url,
            spool_path=str(tmp_path / "spool"),
            batch_poll_s=0.05,
            max_batch_file_bytes=64 * 1024,
        )
        with serving(create_app(settings)) as served:
            yield BatchProxy(served, database, acme, globex)


def wait_for_end(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    """Poll a batch as a client would, until it ends."""
    for _ in range(600):
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not end: {batch.status}")


def test_sdk_batch_end_to_end(proxy: BatchProxy) -> None:
    """Upload, create, poll, download: every custom_id answered once, each recorded once."""
    lines = [chat_line(f"q{n}", question) for n, question in enumerate(QUESTIONS * 3)]
    with proxy.sdk(proxy.acme) as client:
        uploaded = client.files.create(file=("questions.jsonl", jsonl(lines)), purpose="batch")
        assert uploaded.purpose == "batch"
        assert uploaded.bytes == len(jsonl(lines))
        assert client.files.content(uploaded.id).content == jsonl(lines)
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "nightly"},
        )
        assert batch.status == "in_progress"
        ended = wait_for_end(client, batch.id)
        assert ended.status == "completed"
        assert ended.request_counts is not None
        assert (ended.request_counts.total, ended.request_counts.completed) == (9, 9)
        assert ended.metadata == {"job": "nightly"}
        assert ended.output_file_id is not None
        assert ended.error_file_id is None
        output = client.files.content(ended.output_file_id).text.splitlines()
        listed = client.batches.list(limit=5)
    results = [json.loads(line) for line in output]
    assert sorted(r["custom_id"] for r in results) == sorted(f"q{n}" for n in range(9))
    for result in results:
        assert result["error"] is None
        assert result["response"]["status_code"] == 200
        assert result["response"]["body"]["choices"][0]["message"]["content"]
    request_ids = [r["response"]["request_id"] for r in results]
    ledger = proxy.ledger_ids()
    assert all(ledger.count(request_id) == 1 for request_id in request_ids)
    assert batch.id in [b.id for b in listed.data]


def test_cancel_stops_what_has_not_run(proxy: BatchProxy) -> None:
    """A cancelled batch ends cancelled, with every request either answered or in the errors."""
    lines = [chat_line(f"c{n}", QUESTIONS[n % 3]) for n in range(40)]
    with proxy.sdk(proxy.acme) as client:
        uploaded = client.files.create(file=("c.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled", "completed")
        ended = wait_for_end(client, batch.id)
        assert ended.status in ("cancelled", "completed")
        counts = ended.request_counts
        assert counts is not None
        assert counts.completed + counts.failed == 40


def _created(client: openai.OpenAI, content: bytes, **options: str) -> openai.types.Batch:
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=options.get("endpoint", "/v1/chat/completions"),  # type: ignore[arg-type]
        completion_window=options.get("window", "24h"),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (jsonl([chat_line("a", "hi")]) + b"{not json\n", "line 2: not JSON"),
        (jsonl([chat_line("a", "hi"), chat_line("a", "yo")]), "line 2: custom_id 'a'"),
        (jsonl([chat_line("a", "hi", url="/v1/embeddings")]), "line 1: url must be"),
        (jsonl([chat_line("a", "hi", method="GET")]), "line 1: method must be 'POST'"),
        (jsonl([chat_line("a", "hi", body=[1])]), "line 1: body must be a JSON object"),
        (jsonl([chat_line("a", "hi", body={"model": "nope", "messages": []})]), "line 1:"),
        (jsonl([[1, 2]]), "line 1: a line must be a JSON object"),
        (b"\n\n", "holds no requests"),
    ],
)
def test_bad_input_files_are_refused_whole(proxy: BatchProxy, content: bytes, said: str) -> None:
    """A file with a bad line is refused with 400 naming the line; no batch is queued."""
    with proxy.sdk(proxy.acme) as client:
        before = client.batches.list(limit=100).data
        with pytest.raises(openai.BadRequestError) as refused:
            _created(client, content)
        assert said in refused.value.message
        assert client.batches.list(limit=100).data == before


def test_wrong_endpoint_window_and_purpose_are_refused(proxy: BatchProxy) -> None:
    """Only chat completions are batched, in a window of whole hours, from batch files."""
    good = jsonl([chat_line("a", "hi")])
    with proxy.sdk(proxy.acme) as client:
        with pytest.raises(openai.BadRequestError, match="endpoint: this proxy batches"):
            _created(client, good, endpoint="/v1/embeddings")
        with pytest.raises(openai.BadRequestError, match="completion_window"):
            _created(client, good, window="2d")
        with pytest.raises(openai.BadRequestError, match="purpose='batch'"):
            client.files.create(file=("a.jsonl", good), purpose="fine-tune")


def test_oversized_upload_is_refused(proxy: BatchProxy) -> None:
    """A file over the proxy's limit is refused with 413 and not stored."""
    big = jsonl([chat_line(f"b{n}", "x" * 1000) for n in range(80)])
    with proxy.sdk(proxy.acme) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            client.files.create(file=("big.jsonl", big), purpose="batch")
        assert refused.value.status_code == 413
        assert "limit" in refused.value.message


def test_another_tenants_files_and_batches_look_missing(proxy: BatchProxy) -> None:
    """globex cannot read, cancel or batch acme's files and batches: 404, and nothing moves."""
    with proxy.sdk(proxy.acme) as acme, proxy.sdk(proxy.globex) as globex:
        uploaded = acme.files.create(
            file=("a.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch"
        )
        batch = acme.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for call in (
            lambda: globex.batches.retrieve(batch.id),
            lambda: globex.batches.cancel(batch.id),
            lambda: globex.files.retrieve(uploaded.id),
            lambda: globex.files.content(uploaded.id),
            lambda: globex.files.delete(uploaded.id),
            lambda: globex.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert batch.id not in [b.id for b in globex.batches.list().data]
        assert wait_for_end(acme, batch.id).status == "completed"
        assert acme.files.retrieve(uploaded.id).id == uploaded.id
