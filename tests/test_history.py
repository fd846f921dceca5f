"""Context discipline: a workload's history cap drops the oldest whole turns, nothing else."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cascade.cli import main
from cascade.core.history import leading_instructions, trim_history
from cascade.core.planner import Planner
from cascade.core.tokens import estimate_message_tokens
from cascade.errors import PolicyError
from cascade.model.scorer import OnnxScorer
from cascade.policy import Policy, parse_policy
from tests.conftest import TWO_TIERS

Message = dict[str, Any]

SYSTEM: Message = {"role": "system", "content": "You are ACME's support assistant. " * 40}


def _turn(n: int, words: int = 60) -> list[Message]:
    return [
        {"role": "user", "content": f"question {n}: " + "why does it fail " * words},
        {"role": "assistant", "content": f"answer {n}: " + "because of the cache " * words},
    ]


def _tool_turn(n: int) -> list[Message]:
    """A user turn in which the assistant calls two tools and answers from their results."""
    calls = [
        {
            "id": f"call_{n}_{k}",
            "type": "function",
            "function": {"name": "lookup", "arguments": "{}"},
        }
        for k in (1, 2)
    ]
    return [
        {"role": "user", "content": f"look up order {n} " + "please " * 30},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": "shipped " * 40} for c in calls),
        {"role": "assistant", "content": f"order {n} has shipped"},
    ]


def _tokens(messages: list[Message]) -> int:
    return estimate_message_tokens(messages)


def test_a_conversation_under_the_budget_is_sent_as_it_is() -> None:
    """Nothing is trimmed when the conversation fits: the same messages, zero counts."""
    messages = [SYSTEM, *_turn(1), *_turn(2), {"role": "user", "content": "and now?"}]
    result = trim_history(messages, 1, _tokens(messages[1:]))
    assert list(result.messages) == messages
    assert all(a is b for a, b in zip(result.messages, messages, strict=True))
    assert (result.trimmed_messages, result.trimmed_tokens, result.over_budget) == (0, 0, False)


def test_the_oldest_whole_turns_go_until_the_rest_fits() -> None:
    """Turns are dropped oldest first, whole (a user message and its replies), and no more than
    needed: the budget of the last two turns keeps exactly those."""
    first, second, third = _turn(1), _turn(2), _turn(3)
    last = [{"role": "user", "content": "and now?"}]
    messages = [SYSTEM, *first, *second, *third, *last]
    result = trim_history(messages, 1, _tokens([*third, *last]))
    assert list(result.messages) == [SYSTEM, *third, *last]
    assert result.trimmed_messages == 4
    assert result.trimmed_tokens == _tokens([*first, *second])
    assert not result.over_budget


def test_tool_calls_and_their_results_stay_together_at_every_budget() -> None:
    """Whatever the budget, every kept tool result has its call kept and every kept call has
    all its results: turns are cut only at user messages."""
    messages = [SYSTEM, *_tool_turn(1), *_turn(2), *_tool_turn(3), *_turn(4)]
    for budget in range(1, _tokens(messages[1:]) + 2, 7):
        kept = trim_history(messages, 1, budget).messages
        call_ids = {c["id"] for m in kept for c in m.get("tool_calls") or ()}
        result_ids = {m["tool_call_id"] for m in kept if m["role"] == "tool"}
        assert call_ids == result_ids, f"budget {budget}"
        assert kept[1]["role"] == "user", f"budget {budget}: a turn was cut in the middle"


def test_the_last_user_turn_is_kept_even_alone_over_the_budget() -> None:
    """A budget smaller than the last turn keeps that turn (its tool calls too) and says so."""
    last = _tool_turn(9)
    messages = [SYSTEM, *_turn(1), *last]
    result = trim_history(messages, 1, 1)
    assert list(result.messages) == [SYSTEM, *last]
    assert result.trimmed_messages == 2
    assert result.over_budget


def test_the_stable_prefix_is_never_trimmed_nor_counted() -> None:
    """The leading system/developer messages are kept however large, and do not count against
    the budget: a huge system prompt with a short conversation trims nothing."""
    huge = {"role": "system", "content": "Rules. " * 5000}
    developer = {"role": "developer", "content": "Be brief."}
    messages = [huge, developer, {"role": "user", "content": "hi"}]
    assert leading_instructions(messages) == 2
    result = trim_history(messages, 2, 20)
    assert result.messages[0] is huge
    assert result.messages[1] is developer
    assert result.trimmed_messages == 0


def test_instructions_inside_a_dropped_turn_are_kept() -> None:
    """A system message later in the conversation (the app's instruction) survives its turn."""
    switch = {"role": "system", "content": "From now on answer in French."}
    first, second = _turn(1), _turn(2)
    messages = [SYSTEM, *first, switch, *second, {"role": "user", "content": "et alors ?"}]
    result = trim_history(messages, 1, _tokens([switch, messages[-1]]) + 1)
    assert list(result.messages) == [SYSTEM, switch, messages[-1]]
    assert result.trimmed_messages == 4


def test_a_greeting_before_the_first_user_message_is_its_own_oldest_turn() -> None:
    """An assistant message before any user message goes first, alone."""
    greeting = {"role": "assistant", "content": "Hello! How can I help you today? " * 20}
    rest = [*_turn(1, words=5), {"role": "user", "content": "thanks"}]
    messages = [SYSTEM, greeting, *rest]
    result = trim_history(messages, 1, _tokens(rest))
    assert list(result.messages) == [SYSTEM, *rest]
    assert result.trimmed_messages == 1


def test_the_callers_messages_are_never_changed() -> None:
    """Trimming builds a new sequence: the caller's list and messages stay as they were."""
    messages = [SYSTEM, *_tool_turn(1), *_turn(2), {"role": "user", "content": "and?"}]
    before = copy.deepcopy(messages)
    trim_history(messages, 1, 10)
    assert messages == before


def _capped_text(budget: int, placement: str = "system") -> str:
    """TWO_TIERS with an uncapped ``interactive`` workload and an ``agent`` one capped."""
    return (
        TWO_TIERS
        + "workloads:\n  interactive: {}\n"
        + f"  agent: {{max_history_tokens: {budget}}}\n"
        + f"prompt: {{volatile: {placement}}}\n"
    )


def _capped(budget: int, placement: str = "system") -> Policy:
    return parse_policy(_capped_text(budget, placement))


@pytest.fixture(scope="module")
def scorer() -> OnnxScorer:
    """The shipped confidence model, loaded once for these tests."""
    return OnnxScorer("prompt-features-v2", device="cpu")


def test_the_decision_reflects_the_trimmed_conversation(scorer: OnnxScorer) -> None:
    """A capped workload's decision sends, estimates and prices only what is kept; the stable
    prefix (and its hash) and the score stay those of the whole conversation."""
    system = {"role": "system", "content": "You are ACME's assistant.\nToday is 2026-11-22."}
    old, recent = _turn(1), _turn(2)
    last = {"role": "user", "content": "So what should I change?"}
    messages = [system, *old, *recent, last]
    planner = Planner(_capped(_tokens([*recent, last])), scorer)
    whole = planner.plan(messages, workload="interactive")
    capped = planner.plan(messages, workload="agent")
    assert (whole.trimmed_messages, whole.history_trimmed) == (0, None)
    # The volatile date went to a system message after the prefix: it leads what is kept.
    assert capped.messages == (*whole.messages[:2], *recent, last)
    assert capped.trimmed_messages == 2
    assert capped.trimmed_tokens == _tokens(old)
    assert capped.prompt_tokens == whole.prompt_tokens - _tokens(old)
    assert capped.history_trimmed == f"messages=2; tokens={_tokens(old)}"
    assert capped.prefix_hash == whole.prefix_hash
    assert capped.confidence == whole.confidence
    assert capped.estimated_cost_usd is not None
    assert whole.estimated_cost_usd is not None
    assert capped.estimated_cost_usd < whole.estimated_cost_usd


def test_volatile_lines_moved_into_the_last_user_message_are_kept(scorer: OnnxScorer) -> None:
    """With ``prompt.volatile: user`` the moved lines open the last user message, always sent."""
    system = {"role": "system", "content": "You are ACME's assistant.\nToday is 2026-11-22."}
    messages = [system, *_turn(1), {"role": "user", "content": "And today?"}]
    decision = Planner(_capped(1, "user"), scorer).plan(messages, workload="agent")
    assert decision.trimmed_messages == 2
    assert [m["role"] for m in decision.messages] == ["system", "user"]
    assert decision.messages[1]["content"].startswith("Today is 2026-11-22.")


@pytest.mark.parametrize("value", [0, -5])
def test_a_cap_below_one_token_is_refused_where_it_is_written(value: int) -> None:
    """``max_history_tokens`` of zero or less is a policy error naming its file, line and path."""
    text = TWO_TIERS + f"workloads:\n  agent:\n    max_history_tokens: {value}\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="policies/x.yaml")
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith("policies/x.yaml:17: workloads.agent.max_history_tokens: ")
    assert "greater than or equal to 1" in problem


def test_cascade_route_shows_what_the_cap_trimmed(
    write_policy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``cascade route --workload`` says which turns a capped workload would not send."""
    policy = write_policy(_capped_text(1), "capped.yaml")
    old = _turn(1)
    messages = write_policy(json.dumps([*old, {"role": "user", "content": "and?"}]), "m.json")
    args = ["route", "--messages", str(messages), "--policy", str(policy)]
    assert main([*args, "--workload", "agent"]) == 0
    out = capsys.readouterr().out
    trimmed = f"oldest turns trimmed (messages=2; tokens={_tokens(old)})"
    assert f"history     {trimmed} by workload agent's max_history_tokens" in out
    assert main([*args, "--workload", "interactive"]) == 0
    assert "history     sent whole" in capsys.readouterr().out
