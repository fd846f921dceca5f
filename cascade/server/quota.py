"""A request under a budget: what it may spend, where it may go once the budget is spent, and
what it spent.

:func:`plan_within_budget` runs :func:`allow`, then plans the request within what it allows.
:func:`allow` runs before the request is planned. For a key with a budget it caps the request's
output when the client set none (the policy's ``budgets.max_output_tokens``: without a cap the
worst case is unknown), and reserves the request's worst-case cost (:mod:`cascade.run.ceiling`)
in the worker's :class:`~cascade.server.budget.BudgetBook`. When the budget cannot cover it,
the policy's ``budgets.on_spent`` decides: ``refuse`` (OpenAI's 429 ``insufficient_quota``), or
``self_hosted``: the request may use the self-hosted tiers only, and their spend is reported
beside the budget, which then covers API spend only. :func:`spent` settles the reservation with
what the request's calls cost, however it ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from cascade.core.decision import Decision
from cascade.core.request import ChatRequest
from cascade.policy.model import Tier
from cascade.run.attempts import Attempt
from cascade.run.ceiling import cost_ceiling
from cascade.run.router import Router
from cascade.server.auth import Caller
from cascade.server.budget import (
    BudgetBook,
    BudgetExceededError,
    BudgetUnavailableError,
    Reservation,
)
from cascade.server.openai_format import BadRequestError

__all__ = ["Allowance", "allow", "plan_within_budget", "spent"]


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one request may do and spend, decided before it is planned."""

    request: ChatRequest
    """The request as it goes on: its output capped, when the budget needed a cap."""
    only_tiers: frozenset[str] | None
    """The tiers it may use: the key's, narrowed to the self-hosted ones once a budget with
    ``on_spent: self_hosted`` is spent (None: every tier)."""
    reservation: Reservation | None = None
    unmetered: frozenset[str] = frozenset()
    """Tiers whose spend the budget does not cover (reported beside it)."""


async def allow(
    book: BudgetBook | None,
    caller: Caller,
    router: Router,
    request: ChatRequest,
    *,
    workload: str | None,
    pinned: str | None,
) -> Allowance:
    """Reserve the request's worst-case cost from the caller's budget, or narrow it to the
    self-hosted tiers; raises :class:`~cascade.server.budget.BudgetExceededError` when it may not
    go on."""
    policy, only_tiers, budget = router.policy, caller.tiers, caller.budget
    name = workload or policy.default_workload
    if book is None or budget is None or caller.key_id is None or name not in policy.workloads:
        return Allowance(request, only_tiers)  # (an unknown workload is refused by planning)
    rules = policy.budgets
    if request.max_output_tokens is None:
        request = _capped(request, rules.max_output_tokens)
    unmetered = frozenset(
        t.name for t in policy.tiers if rules.on_spent == "self_hosted" and t.kind != "api"
    )
    ceiling = cost_ceiling(
        policy,
        request,
        _reachable(router, name, only_tiers, pinned),
        lambda tier: router.pricer.rates(tier, name),  # at the workload's batch / service tier
        only=only_tiers,
        metered=lambda tier: tier.name not in unmetered,
    )
    try:
        reservation = await book.reserve(caller.key_id, budget.usd, budget.period, ceiling)
    except BudgetExceededError as exc:
        if rules.on_spent == "refuse":
            raise
        local = frozenset(t for t in unmetered if only_tiers is None or t in only_tiers)
        if pinned is not None and pinned not in local:
            hint = f"; once it is spent only self-hosted tiers answer, and {pinned} is not one"
            raise BudgetExceededError(exc.key_id, exc.need_usd, exc.left_usd, hint) from exc
        if pinned is None and not router.allowed(name, local):
            raise
        # Served from the self-hosted tiers: nothing to reserve, their spend is recorded beside.
        reservation = await book.reserve(caller.key_id, budget.usd, budget.period, Decimal(0))
        return Allowance(request, local, reservation, unmetered)
    return Allowance(request, only_tiers, reservation, unmetered)


async def plan_within_budget(
    book: BudgetBook | None,
    caller: Caller,
    router: Router,
    request: ChatRequest,
    *,
    workload: str | None,
    pinned: str | None,
) -> tuple[Allowance, Decision]:
    """:func:`allow`, then the request's plan within what it allows. A budget that cannot
    cover the request is OpenAI's 429 ``insufficient_quota``; one that cannot be read now, a
    503 ``budget_unavailable`` (fail closed: a budget protects money)."""
    try:
        allowance = await allow(book, caller, router, request, workload=workload, pinned=pinned)
    except BudgetExceededError as exc:
        raise BadRequestError(429, str(exc), code="insufficient_quota") from exc
    except BudgetUnavailableError as exc:
        raise BadRequestError(503, str(exc), code="budget_unavailable") from exc
    try:
        decision = await router.plan(
            allowance.request, workload=workload, tier=pinned, only_tiers=allowance.only_tiers
        )
    except BaseException:
        if book is not None and allowance.reservation is not None:
            book.release(allowance.reservation)
        raise
    return allowance, decision


def spent(book: BudgetBook | None, allowance: Allowance, attempts: Sequence[Attempt]) -> None:
    """Settle the request's reservation with what its calls cost (nothing, if none was made)."""
    if book is None or allowance.reservation is None:
        return
    metered = beside = Decimal(0)
    for attempt in attempts:
        if attempt.tier in allowance.unmetered:
            beside += attempt.cost_usd
        else:
            metered += attempt.cost_usd
    book.settle(allowance.reservation, metered, beside)


def _capped(request: ChatRequest, max_tokens: int) -> ChatRequest:
    """``request`` with ``max_tokens`` set, as the tier will get it."""
    return replace(request, max_tokens=max_tokens, body={**request.body, "max_tokens": max_tokens})


def _reachable(
    router: Router, workload: str, only_tiers: frozenset[str] | None, pinned: str | None
) -> list[Tier]:
    """The tiers the request's calls may go to, cheapest first: its workload's (within the
    key's), and a tier it asked for by name."""
    tiers = router.allowed(workload, only_tiers)
    if pinned is not None and all(t.name != pinned for t in tiers):
        tiers.append(router.policy.tier(pinned))
    return tiers
