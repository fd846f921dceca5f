"""``cascade keys``: keys printed once and stored only as their hash, and bad limits refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.cli import main
from cascade.ledger.database import run_with_engine
from cascade.ledger.keys import get_key
from tests.test_keys import database_url


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_keys_cli_prints_a_key_once_and_stores_only_its_hash(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keys create`` prints the key alone on stdout; ``list`` shows ids, tenants and limits but
    no secret or hash; the database holds no secret; ``revoke`` and ``rotate`` say what they did,
    and a revoked key cannot be rotated back to life."""
    with database_url(kind, tmp_path) as url:
        status, out, err = _cli(
            capsys,
            *("keys", "create", "--tenant", "team-a", "--budget", "50/day", "--rpm", "60"),
            *("--tiers", "small,medium", "--expires", "2099-01-31", "--url", url),
        )
        assert status == 0
        key = out.strip()
        assert key.startswith("csk_")
        assert len(key) == 60
        key_id, secret = key[4:16], key[17:]
        assert f"created key {key_id} for tenant team-a" in err
        assert "$50/day, 60 rpm, tiers medium,small, expires 2099-01-31 00:00" in err

        status, listing, _ = _cli(capsys, "keys", "list", "--url", url)
        assert status == 0
        assert key_id in listing
        assert "team-a" in listing
        assert "active" in listing
        assert secret not in listing
        status, out, _ = _cli(capsys, "keys", "list", "--json", "--url", url)
        [row] = [json.loads(line) for line in out.splitlines()]
        assert "hash" not in row
        assert secret not in out
        assert (row["budget_usd"], row["budget_period"], row["tiers"]) == (
            "50",
            "day",
            ["medium", "small"],
        )
        stored = run_with_engine(url, lambda engine: get_key(engine, key_id))
        assert secret not in stored.hash
        assert len(stored.hash) == 64
        assert secret not in repr(stored)
        assert stored.hash not in repr(stored)

        status, out, err = _cli(capsys, "keys", "rotate", key_id, "--url", url)
        rotated = out.strip()
        assert status == 0
        assert rotated != key
        assert rotated.startswith(f"csk_{key_id}_")
        assert run_with_engine(url, lambda engine: get_key(engine, key_id)).hash != stored.hash

        status, out, _ = _cli(capsys, "keys", "revoke", key_id, "--url", url)
        assert status == 0
        assert out.startswith(f"revoked key {key_id} (team-a) at ")
        status, _, err = _cli(capsys, "keys", "rotate", key_id, "--url", url)
        assert status == 2
        assert "was revoked; create a new key instead" in err
        status, _, err = _cli(capsys, "keys", "revoke", "nosuchkey000", "--url", url)
        assert status == 2
        assert "no key 'nosuchkey000'" in err


def test_keys_cli_refuses_bad_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A budget, expiry, limit or name the CLI cannot take is a one-line error saying what is
    allowed, and nothing is printed as a key."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    for args, says in (
        (("--budget", "50"), "expected USD/day or USD/month"),
        (("--budget", "50/week"), "expected USD/day or USD/month"),
        (("--expires", "2001-01-01"), "not in the future"),
        (("--expires", "2099-01-01T10:00"), "give the time's zone"),
        (("--rpm", "0"), "rpm: at least 1"),
        (("--tiers", "small,bad name"), "'bad name' is not a name"),
    ):
        status, out, err = _cli(capsys, "keys", "create", "--tenant", "t", *args, "--url", url)
        assert (status, out) == (2, ""), args
        assert says in err, (args, err)
    status, _, err = _cli(capsys, "keys", "create", "--tenant", "te nant", "--url", url)
    assert status == 2
    assert "tenant 'te nant'" in err
