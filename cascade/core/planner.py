"""Routing before any model runs: prompt → score → decide.

:class:`Planner` chains the three steps for one policy; :func:`route` is the convenience entry
point that keeps one planner per policy and scorer model, built on first use.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from cascade.core import exploration
from cascade.core.capacity import CapacityView, InFlightCounter
from cascade.core.decision import Decision, decide
from cascade.core.history import TrimmedHistory, leading_instructions, trim_history
from cascade.core.prompt import Message, PreparedPrompt, prepare_prompt
from cascade.errors import RoutingError
from cascade.model.scorer import OnnxScorer, Scorer
from cascade.model.verifier import OnnxVerifier, Verifier
from cascade.policy.loading import load_policy
from cascade.policy.model import Policy
from cascade.resources import policy_path

Messages = str | Sequence[Message]
Tools = Sequence[Mapping[str, Any]] | None


def as_messages(messages: Messages) -> Sequence[Message]:
    """Accept a bare prompt string as one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return messages


class AsyncScorer(Protocol):
    """Scores one prompt for an async caller (a :class:`~cascade.model.batching.MicroBatcher`)."""

    async def score(self, text: str) -> float:
        """Confidence for one prompt."""
        ...


class Planner:
    """Decides where requests go under one policy: pure CPU, no network.

    :meth:`plan` scores inline; :meth:`aplan` is for event loops, and scores through an async
    scorer such as a :class:`~cascade.model.batching.MicroBatcher` so that concurrent requests share
    one model call and the loop is not blocked.
    """

    def __init__(
        self,
        policy: Policy | str | Path,
        scorer: Scorer | None = None,
        capacity: CapacityView | None = None,
        verifier: Verifier | None = None,
        *,
        rng: random.Random | None = None,
        explore_seed: int | None = None,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._explore_seed = explore_seed
        if not isinstance(policy, Policy):
            policy = load_policy(_policy_file(policy))
        self.policy = policy
        if verifier is None and policy.verifies:  # loaded now: a bad model fails the policy
            settings = policy.verifier
            verifier = OnnxVerifier(settings.model, device=settings.device)
        self._verifier = verifier
        self.scorer: Scorer = (
            scorer
            if scorer is not None
            else OnnxScorer(policy.scorer.model, device=policy.scorer.device)
        )
        self.capacity: CapacityView = capacity if capacity is not None else InFlightCounter()

    @property
    def verifier(self) -> Verifier:
        """The verifier of the policy's ``verify`` blocks (RoutingError when it has none)."""
        if self._verifier is None:
            raise RoutingError(f"policy {self.policy.name!r} has no tier with a verify block")
        return self._verifier

    def plan(
        self,
        messages: Messages,
        *,
        tools: Tools = None,
        workload: str | None = None,
        max_tokens: int | None = None,
        capacity: CapacityView | None = None,
        only_tiers: Collection[str] | None = None,
        explore: bool = True,
    ) -> Decision:
        """Prepare the prompt, score it and decide its tier (``explore``: False keeps the
        thresholds' choice whatever the policy's ``learning.explore``, as probes do)."""
        prompt = self._prepare(messages, tools)
        confidence = self.scorer.score(prompt.scoring_text)
        return self._decide(
            prompt,
            confidence,
            workload,
            max_tokens,
            capacity,
            only_tiers=only_tiers,
            explore=explore,
        )

    async def aplan(
        self,
        messages: Messages,
        scorer: AsyncScorer,
        *,
        tools: Tools = None,
        workload: str | None = None,
        max_tokens: int | None = None,
        capacity: CapacityView | None = None,
        only_tiers: Collection[str] | None = None,
    ) -> Decision:
        """:meth:`plan` for async callers: the score comes from ``scorer`` (e.g. a MicroBatcher)."""
        prompt = self._prepare(messages, tools)
        confidence = await scorer.score(prompt.scoring_text)
        return self._decide(
            prompt, confidence, workload, max_tokens, capacity, only_tiers=only_tiers
        )

    def prepare(self, messages: Messages, tools: Tools = None) -> PreparedPrompt:
        """The prompt as this policy prepares it (stable prefix first, volatile lines placed),
        before it is scored and decided."""
        return self._prepare(messages, tools)

    def thresholds(
        self,
        prompt: PreparedPrompt,
        confidence: float,
        *,
        workload: str | None = None,
        max_tokens: int | None = None,
        capacity: CapacityView | None = None,
        only_tiers: Collection[str] | None = None,
    ) -> Decision:
        """The tier this policy's thresholds choose for a prepared, scored prompt, for a policy
        that decides without acting (a shadow): never explored, no scorer numbers kept, the
        workload's history cap applied but not reported."""
        prompt, _ = self._trim(prompt, workload)
        return decide(
            self.policy,
            confidence,
            prompt,
            capacity=self.capacity if capacity is None else capacity,
            workload=workload,
            max_tokens=max_tokens,
            only_tiers=only_tiers,
        )

    def _prepare(self, messages: Messages, tools: Tools) -> PreparedPrompt:
        placement = self.policy.prompt.volatile
        return prepare_prompt(as_messages(messages), tools, volatile=placement)

    def _decide(
        self,
        prompt: PreparedPrompt,
        confidence: float,
        workload: str | None,
        max_tokens: int | None,
        capacity: CapacityView | None,
        *,
        only_tiers: Collection[str] | None,
        explore: bool = True,
    ) -> Decision:
        prompt, trimmed = self._trim(prompt, workload)
        view = self.capacity if capacity is None else capacity
        decision = decide(
            self.policy,
            confidence,
            prompt,
            capacity=view,
            workload=workload,
            max_tokens=max_tokens,
            only_tiers=only_tiers,
        )
        if explore:
            decision = exploration.explore(
                self.policy,
                decision,
                prompt,
                self._draw(prompt.scoring_text),
                capacity=view,
                max_tokens=max_tokens,
            )
        decision = self._with_features(decision, prompt.scoring_text)
        if trimmed is None:
            return decision
        return replace(
            decision,
            trimmed_messages=trimmed.trimmed_messages,
            trimmed_tokens=trimmed.trimmed_tokens,
        )

    def _draw(self, text: str) -> float:
        """Exploration's draw, uniform in [0, 1): random, or with ``explore_seed`` a function of
        the seed and the prompt (an experiment that repeats exactly, in any arrival order)."""
        if self._explore_seed is None:
            return self._rng.random()
        digest = hashlib.sha256(f"{self._explore_seed}\0{text}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def _with_features(self, decision: Decision, text: str) -> Decision:
        """The decision with the numbers the scorer saw, when the policy keeps them and the
        scorer has them (its model reads numbers, not text)."""
        featurize = getattr(self.scorer, "features", None)
        if not self.policy.learning.record_features or featurize is None:
            return decision
        row = featurize(text)
        if row is None:
            return decision
        version = getattr(self.scorer, "feature_version", None)
        return replace(decision, features=row, feature_version=version)

    def _trim(
        self, prompt: PreparedPrompt, workload: str | None
    ) -> tuple[PreparedPrompt, TrimmedHistory[dict[str, Any]] | None]:
        """The prompt with its oldest turns dropped by the workload's ``max_history_tokens``,
        and what went (None when nothing did: the prompt is then the one given).

        After the prompt step, not before: validation has seen the whole request (a malformed
        message is refused with the index the client sent, cap or not); the volatile lines are
        already placed where trimming keeps them (their system message leads the conversation,
        or they open the last user message); the stable prefix is untouched, so its hash and
        tokens stand; the score read the last user message, which is always kept; and the token
        estimate is a sum over messages, so the dropped ones are simply subtracted.
        """
        name = self.policy.default_workload if workload is None else workload
        settings = self.policy.workloads.get(name)  # an unknown one: decide() refuses it
        budget = None if settings is None else settings.max_history_tokens
        # What follows the stable prefix, the volatile lines' message included, is estimated
        # already: when even that fits, nothing is estimated again.
        if budget is None or prompt.prompt_tokens - prompt.prefix_tokens <= budget:
            return prompt, None
        messages = prompt.messages
        trimmed = trim_history(messages, leading_instructions(messages), budget)
        if not trimmed.trimmed_messages:
            return prompt, None
        tokens = prompt.prompt_tokens - trimmed.trimmed_tokens
        return replace(prompt, messages=trimmed.messages, prompt_tokens=tokens), trimmed


class _PlannerCache:
    """One planner per policy file (reloaded when the file changes) and one scorer per model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_file: dict[Path, tuple[float, Planner]] = {}
        self._scorers: dict[tuple[str, str], Scorer] = {}

    def for_policy(self, policy: Policy | str | Path | None) -> Planner:
        if isinstance(policy, Policy):
            return Planner(policy, self._scorer(policy))
        path = _policy_file("default" if policy is None else policy)
        mtime = os.stat(path).st_mtime
        with self._lock:
            cached = self._by_file.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        loaded = load_policy(path)
        planner = Planner(loaded, self._scorer(loaded))
        with self._lock:
            self._by_file[path] = (mtime, planner)
        return planner

    def _scorer(self, policy: Policy) -> Scorer:
        key = (policy.scorer.model, policy.scorer.device)
        with self._lock:
            scorer = self._scorers.get(key)
        if scorer is None:
            scorer = OnnxScorer(policy.scorer.model, device=policy.scorer.device)
            with self._lock:
                self._scorers.setdefault(key, scorer)
        return scorer


def _policy_file(policy: object) -> Path:
    """The file of a policy given by name or path; RoutingError for anything else."""
    if not isinstance(policy, str | Path):
        raise RoutingError(
            f"policy must be a cascade.Policy, a policy file's path or a shipped policy's name, "
            f"got {type(policy).__name__}"
        )
    return policy_path(policy).resolve()


_cache = _PlannerCache()


def planner_for(policy: Policy | str | Path | None = None) -> Planner:
    """The planner for ``policy`` (a Policy, a policy file, or a shipped policy's name; default
    ``default``): built once per file and scorer model, rebuilt when the file changes."""
    return _cache.for_policy(policy)


def route(
    messages: Messages,
    *,
    policy: Policy | str | Path | None = None,
    tools: Tools = None,
    workload: str | None = None,
    max_tokens: int | None = None,
    capacity: CapacityView | None = None,
) -> Decision:
    """Decide which tier should answer a chat request, before any model runs.

    ``messages`` are OpenAI-style chat messages (or a bare prompt string). ``policy`` is a
    :class:`~cascade.policy.Policy`, a policy file, or the name of a shipped policy (default:
    ``default``). Pure CPU and no network: the policy and the scorer are loaded once and reused,
    and a changed policy file is picked up on the next call. ``capacity`` reports calls in flight
    per tier (default: none). Returns the tier, model, confidence, reason, cache-friendly messages
    and estimated cost.
    """
    planner = planner_for(policy)
    return planner.plan(
        messages, tools=tools, workload=workload, max_tokens=max_tokens, capacity=capacity
    )
