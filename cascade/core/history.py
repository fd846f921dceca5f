"""Context discipline: a conversation's oldest turns dropped to fit a token budget (opt-in).

A workload's ``max_history_tokens`` caps what a request sends of its conversation. What
:func:`trim_history` keeps and drops:

- the **head** (the leading system/developer messages: the stable prefix, and the volatile lines'
  message the prompt step puts right after it) is always sent and not counted;
- the rest is cut into **turns**: a user message and everything up to the next user message
  (messages before the first user message, such as an assistant's greeting, are a turn of their
  own). The oldest whole turns go until what remains fits the budget, by
  :func:`~cascade.core.tokens.estimate_message_tokens`;
- the **last user turn is always kept**, even alone over the budget (``over_budget`` says so);
- **tool calls stay with their results**: the API wants a call's results right after the
  assistant message that made it, before any later user message, so both are in one turn (a
  conversation that breaks this is refused upstream whether it is trimmed or not);
- **system/developer messages inside a dropped turn are kept**, in their order: they are the
  app's instructions ("answer in French from now on"), usually short, and dropping one would
  change the model's behaviour where nobody sees it; they count against the budget.

Pure and deterministic; the caller's messages are never changed (the kept ones are the same
objects, in a new tuple).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cascade.core.tokens import estimate_message_tokens

__all__ = ["TrimmedHistory", "leading_instructions", "trim_history"]

M = TypeVar("M", bound=Mapping[str, Any])

_INSTRUCTION_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class TrimmedHistory(Generic[M]):
    """A conversation after :func:`trim_history`, and what it lost."""

    messages: tuple[M, ...]
    """What to send: the head, then the kept turns (the caller's own message objects)."""
    trimmed_messages: int = 0
    """Messages dropped (0: the conversation fit, ``messages`` is the input)."""
    trimmed_tokens: int = 0
    """Estimated tokens of the dropped messages."""
    over_budget: bool = False
    """What was kept still exceeds the budget: the last user turn alone does."""


def leading_instructions(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many leading messages are system/developer messages (the head trimming keeps)."""
    count = 0
    while count < len(messages) and messages[count].get("role") in _INSTRUCTION_ROLES:
        count += 1
    return count


def trim_history(messages: Sequence[M], head: int, budget: int) -> TrimmedHistory[M]:
    """Drop the oldest whole turns after the first ``head`` messages until the rest fits
    ``budget`` estimated tokens (see the module docstring for what is kept)."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1 token, got {budget}")
    rest = messages[head:]
    costs = [estimate_message_tokens((message,)) for message in rest]
    total = sum(costs)
    if total <= budget:
        return TrimmedHistory(tuple(messages))
    # A cut at a user message drops everything before it (instructions excepted).
    cuts = [i for i, message in enumerate(rest) if i and message.get("role") == "user"]
    cut = dropped = dropped_tokens = start = 0
    for cut in cuts:
        for index in range(start, cut):
            if rest[index].get("role") not in _INSTRUCTION_ROLES:
                dropped += 1
                dropped_tokens += costs[index]
        start = cut
        if total - dropped_tokens <= budget:
            break
    kept = [m for m in rest[:cut] if m.get("role") in _INSTRUCTION_ROLES]
    return TrimmedHistory(
        (*messages[:head], *kept, *rest[cut:]),
        trimmed_messages=dropped,
        trimmed_tokens=dropped_tokens,
        over_budget=total - dropped_tokens > budget,
    )
