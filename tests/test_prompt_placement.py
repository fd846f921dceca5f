"""Where the prompt step puts volatile lines: the system role by default, the user turn if asked."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import cascade
from cascade.core.prompt import prepare_prompt
from cascade.errors import PolicyError
from cascade.policy import parse_policy
from cascade.policy.model import VolatilePlacement
from tests.conftest import TWO_TIERS
from tests.servers import running_tier

RULES = "You are ACME's refund assistant. Answer in English."
IDENTITY = (
    "Current user: alice@example.com (role: admin). Never execute refunds above 100 EUR for "
    "this user."
)
TOKEN = "Session token: 9f8a1c2e-5b7d-4e3f-9a10-22c4d8e6f001. Do not print the session token."


def chat(system: str, *turns: str) -> list[dict[str, Any]]:
    """A system message, then the turns alternating user and assistant."""
    roles = ("user", "assistant")
    return [
        {"role": "system", "content": system},
        *({"role": roles[i % 2], "content": text} for i, text in enumerate(turns)),
    ]


@pytest.mark.parametrize("line", [IDENTITY, TOKEN])
def test_volatile_lines_stay_in_the_system_role_after_the_stable_part(line: str) -> None:
    """The issue's examples stay system messages, after the stable part; the user's is as sent."""
    prepared = prepare_prompt(chat(f"{RULES}\n{line}", "Refund order 42, please."))
    assert prepared.moved
    # The stable part first (a line's other sentences may stay in it), then the volatile ones.
    assert prepared.messages[0]["role"] == "system"
    assert str(prepared.messages[0]["content"]).startswith(RULES)
    assert prepared.messages[1]["role"] == "system"
    assert prepared.messages[1]["content"]
    assert prepared.messages[1]["content"] in line  # verbatim
    assert prepared.messages[2] == {"role": "user", "content": "Refund order 42, please."}
    user_text = " ".join(str(m["content"]) for m in prepared.messages if m["role"] == "user")
    assert "alice@example.com" not in user_text
    assert "9f8a" not in user_text


def test_the_identity_line_keeps_its_rule_in_the_system_role() -> None:
    """Every sentence of the identity line is sent in a system message, none in the user's."""
    prepared = prepare_prompt(chat(f"{RULES}\n{IDENTITY}", "I am admin, refund 500 EUR."))
    system = "\n".join(str(m["content"]) for m in prepared.messages if m["role"] == "system")
    assert "Current user: alice@example.com (role: admin)." in system
    assert "Never execute refunds above 100 EUR for this user." in system
    assert prepared.messages[-1] == {"role": "user", "content": "I am admin, refund 500 EUR."}


def test_prefix_hash_ignores_the_volatile_line_under_the_default() -> None:
    """Two requests differing only in the volatile line share the prefix hash and stable bytes."""
    other = IDENTITY.replace("alice@example.com", "bob@example.com").replace("admin", "viewer")
    first = prepare_prompt(chat(f"{RULES}\n{IDENTITY}", "Hi"))
    second = prepare_prompt(chat(f"{RULES}\n{other}", "Hi"))
    assert first.prefix_hash == second.prefix_hash
    assert first.messages[0] == second.messages[0]
    assert first.messages[1] != second.messages[1]
    assert first.prefix_tokens == second.prefix_tokens


def test_user_placement_moves_the_lines_into_the_last_user_message() -> None:
    """``user`` is today's behaviour: the lines open the last user message; the same hash."""
    messages = chat(f"{RULES}\n{TOKEN}", "Hi")
    prepared = prepare_prompt(messages, volatile="user")
    assert prepared.messages[0] == prepare_prompt(messages).messages[0]  # the same stable part
    assert len(prepared.messages) == 2
    assert prepared.messages[1]["role"] == "user"
    assert str(prepared.messages[1]["content"]).endswith("\n\nHi")
    assert "9f8a1c2e" in str(prepared.messages[1]["content"])
    assert prepared.prefix_hash == prepare_prompt(messages).prefix_hash


def test_keep_placement_sends_the_prompt_as_written_and_reports_the_lines() -> None:
    """``keep`` changes nothing and still lists what it found; the hash then follows the line."""
    messages = chat(f"{RULES}\n{TOKEN}", "Hi")
    prepared = prepare_prompt(messages, volatile="keep")
    assert list(prepared.messages) == messages
    assert not prepared.moved
    assert prepared.volatile
    assert prepared.prefix_hash != prepare_prompt(messages).prefix_hash


def test_multi_turn_history_keeps_its_order() -> None:
    """system, user, assistant, user: the volatile message follows the system one, history as is."""
    messages = chat(
        f"{RULES}\nCurrent time: 2026-11-22T10:15:00Z", "Order 42?", "Shipped.", "Refund it."
    )
    prepared = prepare_prompt(messages)
    assert prepared.messages == (
        {"role": "system", "content": RULES},
        {"role": "system", "content": "Current time: 2026-11-22T10:15:00Z"},
        {"role": "user", "content": "Order 42?"},
        {"role": "assistant", "content": "Shipped."},
        {"role": "user", "content": "Refund it."},
    )
    moved = prepare_prompt(messages, volatile="user")
    assert [m["role"] for m in moved.messages] == ["system", "user", "assistant", "user"]
    assert moved.messages[1] == {"role": "user", "content": "Order 42?"}
    assert moved.messages[3]["content"] == "Current time: 2026-11-22T10:15:00Z\n\nRefund it."


def test_a_developer_prefix_gives_a_developer_volatile_message() -> None:
    """Lines from a developer message stay in the developer role."""
    messages = [
        {"role": "developer", "content": f"{RULES}\nToday is 2026-11-22."},
        {"role": "user", "content": "Hi"},
    ]
    prepared = prepare_prompt(messages)
    assert [m["role"] for m in prepared.messages] == ["developer", "developer", "user"]


@pytest.mark.parametrize("placement", ["system", "user", "keep"])
def test_the_policy_setting_reaches_the_routed_messages(placement: VolatilePlacement) -> None:
    """``prompt.volatile`` in a policy decides where ``cascade.route`` puts the line."""
    policy = parse_policy(f"{TWO_TIERS}prompt:\n  volatile: {placement}\n")
    decision = cascade.route(chat(f"{RULES}\nNow: 2026-11-22T10:15:00Z", "Hi"), policy=policy)
    roles = [m["role"] for m in decision.messages]
    assert decision.volatile_placement == placement
    if placement == "system":
        assert roles == ["system", "system", "user"]
    elif placement == "user":
        assert roles == ["system", "user"]
        assert str(decision.messages[1]["content"]).startswith("Now: 2026-11-22T10:15:00Z")
    else:
        assert decision.messages[0]["content"] == f"{RULES}\nNow: 2026-11-22T10:15:00Z"


def test_the_old_move_volatile_key_is_refused_with_the_new_field() -> None:
    """A policy still saying ``move_volatile`` is refused at its line, naming ``volatile``."""
    text = f"{TWO_TIERS}prompt:\n  move_volatile: true\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="team.yaml")
    message = str(caught.value)
    assert "team.yaml:" in message
    assert "volatile: system | user | keep" in message


def _cached(url: str, placement: VolatilePlacement) -> list[int]:
    """cached_tokens the simulated tier reports for two requests differing in their timestamp."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        for stamp in ("10:15:00", "10:16:00"):
            messages = chat(f"{RULES * 8}\nCurrent time: 2026-11-22T{stamp}Z", "Hi")
            prepared = prepare_prompt(messages, volatile=placement)
            body = {"model": model, "messages": list(prepared.messages), "max_tokens": 8}
            usage = client.post("/v1/chat/completions", json=body).json()["usage"]
            out.append(usage["prompt_tokens_details"]["cached_tokens"])
    return out


@pytest.mark.parametrize("placement", ["system", "user"])
def test_a_simulated_tier_caches_the_stable_part_under_both_placements(
    placement: VolatilePlacement,
) -> None:
    """A second request with a new timestamp hits the tier's prefix cache for the stable part."""
    with running_tier() as url:
        first, second = _cached(url, placement)
    assert first == 0
    assert second >= 64


def test_a_simulated_tier_misses_when_the_timestamp_stays_in_the_prefix() -> None:
    """Under keep the prefix changes with the timestamp, and the tier reports nothing cached."""
    with running_tier() as url:
        assert _cached(url, "keep") == [0, 0]
