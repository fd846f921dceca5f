"""Labels from traffic: ``cascade export --labels`` writes the ledger's outcomes with the scorer's
features and propensities, and ``cascade train --base`` adapts the shipped model on them."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from cascade.cli import main
from cascade.errors import LabeledDataError
from cascade.ledger import AttemptRecord, LedgerEntry, RequestRecord
from cascade.model.features import PROMPT_FEATURES_VERSION, prompt_features
from cascade.model.manifest import load_manifest
from cascade.model.scorer import OnnxScorer
from cascade.server.app import create_app
from cascade.server.recording import features_text
from cascade.server.settings import ServerSettings
from cascade.training.traffic import load_labeled
from tests.ledger_databases import sqlite_ledger
from tests.servers import serving
from tests.test_training import _synthetic_rows
from tests.test_verify_step import AnsweringTier

# Every request is decided for medium (small's threshold is 1); exploration sends half of them
# to small, whose answer (0) the verifier judges against medium's (1) as witness and rejects.
POLICY = """\
name: labels
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{input_usd_per_mtok: 1, output_usd_per_mtok: 1}}
    threshold: 1.0
    verify: {{witness: medium, threshold: 0.99}}
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
learning:
  explore: 0.5
"""


def _run(*argv: str) -> int:
    return main(list(argv))


def test_an_export_of_proxied_traffic_keeps_features_propensities_and_label_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the real proxy: explored requests to small rejected by the verify step are
    labeled weak 0 with the verifier's confidence, medium's kept answers 1 1, an answer marked
    useless weak 0 from feedback; every row has the scorer's 28 numbers of prompt-features-v2,
    its propensity (0.5 either way) and whether it was explored."""
    tiers = [
        AnsweringTier(name, [f"The answer is {n}."])
        for n, name in enumerate(("small", "medium", "big"))
    ]
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    with serving(tiers[0].app()) as s, serving(tiers[1].app()) as m, serving(tiers[2].app()) as b:
        policy = tmp_path / "labels.yaml"
        policy.write_text(POLICY.format(small=s, medium=m, big=b))
        settings = ServerSettings(
            policies=(str(policy),), database_url=database, spool_path=str(tmp_path / "spool")
        )
        with serving(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
            ids: dict[str, str] = {}
            for n in range(40):
                question = f"Question {n}: how many legs do {n} spiders have?"
                body = {"model": "cascade", "messages": [{"role": "user", "content": question}]}
                reply = client.post("/v1/chat/completions", json=body)
                assert reply.status_code == 200
                ids[reply.headers["x-cascade-request-id"]] = reply.headers["x-cascade-attempts"]
            useless = next(rid for rid, tried in ids.items() if "small" not in tried)
            assert client.post("/v1/feedback", json={"request_id": useless}).status_code == 200
    out = tmp_path / "labels.jsonl"
    args = ("--url", database, "--policy", str(policy), "--out", str(out))
    assert _run("export", "--labels", *args) == 0
    assert "have neither a prompt" not in capsys.readouterr().err
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == set(ids)
    for row in rows.values():
        assert len(row["features"]) == 28
        assert row["feature_version"] == PROMPT_FEATURES_VERSION
        assert (row["propensity"], row["decided_tier"]) == (0.5, "medium")
        assert row["prompt"] is None
    explored = [r for r in rows.values() if r["explored"]]
    assert explored
    assert all(r["weak_tier"] == "small" for r in explored)
    assert {r["label_source"] for r in explored} == {"verify"}
    assert all((r["weak_score"], r["strong_score"]) == (0.0, 1.0) for r in explored)
    assert all(0.0 <= r["verify_confidence"] < 0.99 for r in explored)
    kept = [r for r in rows.values() if not r["explored"] and r["id"] != useless]
    assert {(r["label_source"], r["weak_score"], r["weak_tier"]) for r in kept} == {
        ("answered", 1.0, "medium")
    }
    assert (rows[useless]["label_source"], rows[useless]["weak_score"]) == ("feedback", 0.0)


def _ledger_of_rows(tmp_path: Path, count: int) -> str:
    """``count`` requests as the proxy records them, without prompts: the features of a
    synthetic prompt whose label follows its words; small kept or escalated to big by the
    verify step as the label says; a fifth explored (propensity 0.2), the rest not (0.8)."""
    rng = random.Random(7)
    entries = []
    for row in _synthetic_rows(count, seed=11):
        weak_ok, explored = row["weak_score"] == 1.0, rng.random() < 0.2
        first = AttemptRecord(
            seq=0,
            tier="small",
            model="m",
            role="primary",
            outcome="ok" if weak_ok else "rejected",
            reason=None if weak_ok else "verify: confidence 0.2 below 0.5",
            verify_confidence=0.9 if weak_ok else 0.2,
            cost_usd=row_cost(1),
        )
        attempts = [first]
        if not weak_ok:
            attempts.append(
                AttemptRecord(
                    seq=1, tier="big", model="m", role="escalation", outcome="ok",
                    cost_usd=row_cost(30),
                )
            )  # fmt: skip
        request = RequestRecord(
            request_id=str(row["id"]),
            policy="labels",
            policy_version="v1",
            workload="interactive",
            decision_reason="explored" if explored else "threshold",
            status="ok",
            http_status=200,
            first_tier="small",
            final_tier=attempts[-1].tier,
            cost_usd=sum((a.cost_usd for a in attempts), row_cost(0)),
            completion_tokens=20,
            useful_tokens=20,
            features=features_text(tuple(prompt_features(str(row["prompt"])))),
            feature_version=PROMPT_FEATURES_VERSION,
            decided_tier="small" if not explored else "big",
            propensity=0.2 if explored else 0.8,
            explored=explored,
        )
        entries.append(LedgerEntry(request, tuple(attempts)))

    return sqlite_ledger(tmp_path, entries)


def row_cost(micro: int) -> Decimal:
    """``micro`` millionths of a dollar, as the ledger keeps money."""
    return Decimal(micro) / 1_000_000


@pytest.fixture
def exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Labels exported from a ledger of 300 feature rows (no prompts)."""
    url = _ledger_of_rows(tmp_path, 300)
    policy = tmp_path / "labels.yaml"
    policy.write_text(POLICY.format(small="http://a", medium="http://b", big="http://c"))
    out = tmp_path / "labels.jsonl"
    assert _run("export", "--labels", "--url", url, "--policy", str(policy), "--out", str(out)) == 0
    capsys.readouterr()
    return out


def test_train_base_adapts_the_shipped_model_on_exported_features(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cascade train --base prompt-features-v2`` on rows with features and no prompt writes a
    model folder whose manifest names its base and its data, which scores prompts; weighting by
    1 / propensity changes the fit (the same rows without propensities give other weights)."""
    folder = tmp_path / "adapted"
    assert _run("train", "--base", "prompt-features-v2", "--data", str(exported),
                "--out", str(folder), "--json") == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    manifest = load_manifest(folder)
    assert manifest.base_model == "prompt-features-v2"
    assert manifest.feature_version == PROMPT_FEATURES_VERSION
    assert [(d.file, d.rows) for d in manifest.training_data] == [("labels.jsonl", 300)]
    assert result["adaptation"]["alpha"] is not None  # a correction, not the base kept as is
    scores = OnnxScorer(folder, device="cpu").score_batch(["Prove the theorem.", "Hello!"])
    assert all(0.0 <= s <= 1.0 for s in scores)
    unweighted = tmp_path / "unweighted.jsonl"
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    unweighted.write_text("".join(json.dumps({**r, "propensity": None}) + "\n" for r in rows))
    other = tmp_path / "other"
    assert _run("train", "--base", "prompt-features-v2", "--data", str(unweighted),
                "--out", str(other)) == 0  # fmt: skip
    assert load_manifest(other).sha256 != manifest.sha256


def test_features_of_another_version_are_refused(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows whose features another feature version made are refused, naming the row, both
    versions and what to do; a reader that needs the prompt's text refuses feature rows."""
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    old = tmp_path / "old.jsonl"
    old.write_text(
        "".join(json.dumps({**r, "feature_version": "features-v0"}) + "\n" for r in rows)
    )
    assert _run("train", "--base", "prompt-features-v2", "--data", str(old),
                "--out", str(tmp_path / "x")) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert f"row {rows[0]['id']!r}: its features are of version 'features-v0'" in error
    assert f"--base prompt-features-v2 reads '{PROMPT_FEATURES_VERSION}'" in error
    assert "join the prompts (cascade export --prompts)" in error
    assert not (tmp_path / "x").exists()
    with pytest.raises(LabeledDataError, match=r"labels\.jsonl:1: field 'prompt': missing; "
                       r"this row has only the scorer's features"):  # fmt: skip
        load_labeled([exported])
