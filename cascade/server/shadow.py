"""Shadow policies (``cascade serve --shadow FILE``): a candidate decides beside the live policy.

A shadow is a policy file whose ``name`` is one the proxy serves. Every request that live policy
routes (the chat route and the Batch API runner; not a request that asks for a tier's model by
name, since routing is skipped for it) is decided under the shadow too, right after the live
decision and with the same capacity view, workload and key's tiers; the shadow's tier, confidence,
name and version (its fingerprint) go into the request's ledger row (``shadow_*``). Nothing acts
on it: no tier is called for it, and exploration (``learning.explore``) never applies to it.

The shadow reuses the live confidence when its scorer is the same model; else its own scorer
scores the prompt, through a batcher as the live one does. Whatever fails in the shadow's path is
logged (``shadow.failed``: the error and where, never the prompt), counted in ``/metrics``
(``cascade_shadow_decisions_total{result="failed"}``) and leaves the request as it was: the
proxy fails open for a shadow, which only informs.

Shadow files are reloaded like policy files. A file that no longer loads, or now names a policy
not served here, is refused with a logged error and the last good shadow stays; at start-up the
same mistakes stop the proxy, with the file and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from cascade.core.capacity import CapacityView
from cascade.core.decision import Decision
from cascade.core.planner import AsyncScorer, Planner
from cascade.core.prompt import PreparedPrompt
from cascade.core.request import ChatRequest
from cascade.errors import CascadeError
from cascade.model.scorer import Scorer
from cascade.policy.loading import load_policy
from cascade.policy.model import Policy
from cascade.resources import policy_path

__all__ = ["ShadowDecision", "ShadowPolicy", "Shadows", "check_shadow_names", "live_prompt"]

log = structlog.get_logger("cascade.shadow")

Workload = str | None | Callable[[Policy], str | None]
"""The workload a shadow decides as: a name (None: its default), or one chosen for its policy."""


@dataclass(frozen=True, slots=True)
class ShadowDecision:
    """What a shadow policy decided for one request (recorded, never acted on)."""

    policy: str
    policy_version: str
    tier: str
    confidence: float


class ShadowCounter(Protocol):
    """Where shadow decisions are counted (:class:`~cascade.server.metrics.Metrics`)."""

    def shadow(self, policy: str, version: str, result: str) -> None:
        """Count one shadow decision: ``agreed``, ``differed`` or ``failed``."""
        ...


class _Inline:
    """A scorer called on the loop, for a proxy that batches no scoring."""

    def __init__(self, scorer: Scorer) -> None:
        self._scorer = scorer

    async def score(self, text: str) -> float:
        return self._scorer.score(text)


class ShadowPolicy:
    """One candidate policy, deciding beside the live policy of its name."""

    def __init__(self, planner: Planner, scorer: AsyncScorer, path: Path) -> None:
        self.planner = planner
        self.scorer = scorer
        self.path = path

    @property
    def policy(self) -> Policy:
        """The candidate policy."""
        return self.planner.policy

    async def decide(
        self,
        live_policy: Policy,
        chat: ChatRequest,
        live: Decision,
        *,
        workload: Workload,
        only_tiers: Collection[str] | None,
        capacity: CapacityView,
    ) -> ShadowDecision:
        """The candidate's tier for a request the live policy decided as ``live``."""
        policy = self.policy
        if policy.scorer.model == live_policy.scorer.model:
            confidence = live.confidence
            same = live.volatile_placement == policy.prompt.volatile and not live.trimmed_messages
            prompt = live_prompt(live) if same else self.planner.prepare(chat.messages, chat.tools)
        else:
            prompt = self.planner.prepare(chat.messages, chat.tools)
            confidence = await self.scorer.score(prompt.scoring_text)
        decision = self.planner.thresholds(
            prompt,
            confidence,
            workload=workload(policy) if callable(workload) else workload,
            max_tokens=chat.max_output_tokens,
            capacity=capacity,
            only_tiers=only_tiers,
        )
        return ShadowDecision(policy.name, policy.fingerprint, decision.tier, confidence)


def live_prompt(live: Decision) -> PreparedPrompt:
    """The prompt the live policy decided on, as prepared (no history trimmed from it): a
    shadow that places volatile lines alike would prepare the same one, so it is not prepared
    again (preparing is half a decision's cost). Its scoring text is not kept: the live score
    is reused."""
    return PreparedPrompt(
        messages=live.messages,
        tools=live.tools,
        prefix_hash=live.prefix_hash,
        prefix_tokens=live.prefix_tokens,
        prompt_tokens=live.prompt_tokens,
        scoring_text="",
        volatile=live.moved,
        moved=bool(live.moved),
        placement=live.volatile_placement,
        prefix_messages=live.prefix_messages,
    )


ScorerOf = Callable[[Policy], Scorer]
BatcherOf = Callable[[Policy], Awaitable[AsyncScorer | None]]


class Shadows:
    """The proxy's shadow policies, by the name of the live policy each one shadows."""

    def __init__(self, scorer: ScorerOf, batcher: BatcherOf, capacity: CapacityView) -> None:
        self._scorer_of = scorer
        self._batcher_of = batcher
        self._capacity = capacity
        self._by_name: dict[str, ShadowPolicy] = {}
        self._files: dict[Path, tuple[int, int] | None] = {}

    def __bool__(self) -> bool:
        """Whether any live policy has a shadow now."""
        return bool(self._by_name)

    def get(self, name: str) -> ShadowPolicy | None:
        """The shadow of the live policy ``name`` (None: it has none)."""
        return self._by_name.get(name)

    async def load(self, files: Sequence[str | Path], live: Collection[str]) -> None:
        """Load every shadow file for the live policies named ``live``; CascadeError (the file
        and what is wrong) for a file that does not load, a name not served, or a second
        shadow of one policy."""
        loaded: list[tuple[Path, Policy]] = []
        for name in files:
            # Not resolve(): a ConfigMap's file is a symlink the kubelet swaps (as for policies).
            path = policy_path(name).absolute()
            stamp = _stamp(path)
            loaded.append((path, load_policy(path)))
            self._files[path] = stamp
        check_shadow_names(loaded, live)
        for path, policy in loaded:
            self._by_name[policy.name] = await self._shadow(policy, path)
            log.info(
                "shadow.loaded", policy=policy.name, version=policy.fingerprint, file=str(path)
            )

    async def reload(self, live: Collection[str]) -> None:
        """Re-read changed shadow files; one that does not load, or names a policy not served,
        is refused (logged) and the last good shadow stays."""
        for path, seen in list(self._files.items()):
            try:
                stamp = _stamp(path)
            except CascadeError as exc:
                log.warning("shadow.reload_failed", file=str(path), error=str(exc))
                continue
            if stamp == seen:
                continue
            self._files[path] = stamp
            try:
                policy = load_policy(path)
                others = [(p, s.policy) for s in self._by_name.values() if (p := s.path) != path]
                check_shadow_names([*others, (path, policy)], live)
                shadow = await self._shadow(policy, path)
            except CascadeError as exc:
                kept = [s.policy.fingerprint for s in self._by_name.values() if s.path == path]
                log.error(
                    "shadow.reload_refused",
                    file=str(path),
                    error=str(exc),
                    kept_version=kept[0] if kept else None,
                )
                continue
            for name, old in list(self._by_name.items()):
                if old.path == path:
                    del self._by_name[name]
            self._by_name[policy.name] = shadow
            log.info("shadow.reloaded", policy=policy.name, version=policy.fingerprint)

    async def decide(
        self,
        live_policy: Policy,
        chat: ChatRequest,
        live: Decision,
        *,
        workload: Workload,
        only_tiers: Collection[str] | None,
        counter: ShadowCounter,
        request_id: str,
    ) -> ShadowDecision | None:
        """The shadow's decision for a request the live policy decided as ``live`` (None: no
        shadow, or it failed: logged and counted, never raised)."""
        shadow = self._by_name.get(live_policy.name)
        if shadow is None:
            return None
        try:
            found = await shadow.decide(
                live_policy,
                chat,
                live,
                workload=workload,
                only_tiers=only_tiers,
                capacity=self._capacity,
            )
        except Exception as exc:  # fail open: a shadow only informs, it never fails a request
            version = shadow.policy.fingerprint
            log.warning(
                "shadow.failed",
                request_id=request_id,
                policy=live_policy.name,
                shadow_version=version,
                **_described(exc),
            )
            counter.shadow(live_policy.name, version, "failed")
            return None
        result = "agreed" if found.tier == live.tier else "differed"
        counter.shadow(live_policy.name, found.policy_version, result)
        return found

    async def _shadow(self, policy: Policy, path: Path) -> ShadowPolicy:
        scorer = self._scorer_of(policy)
        planner = Planner(policy, scorer, self._capacity)
        batcher = await self._batcher_of(policy)
        return ShadowPolicy(planner, batcher if batcher is not None else _Inline(scorer), path)


def check_shadow_names(shadows: Sequence[tuple[Path, Policy]], live: Collection[str]) -> None:
    """Refuse (CascadeError) a shadow whose policy name is not served, or a second shadow of
    one policy (the ledger row has room for one)."""
    seen: dict[str, Path] = {}
    for path, policy in shadows:
        if policy.name not in live:
            raise CascadeError(
                f"--shadow {path}: it names policy {policy.name!r}, which this proxy does not "
                f"serve (it serves: {', '.join(sorted(live))}); a shadow decides beside the live "
                "policy of the same name, so give it that policy's name"
            )
        if policy.name in seen:
            raise CascadeError(
                f"--shadow {path}: policy {policy.name!r} already has a shadow ({seen[policy.name]}"
                "); one shadow per live policy"
            )
        seen[policy.name] = path


def _stamp(path: Path) -> tuple[int, int]:
    """A shadow file's inode and modification time (either changes when it is replaced)."""
    try:
        status = os.stat(path)
    except OSError as exc:
        raise CascadeError(f"{path}: cannot read the shadow policy: {exc.strerror}") from exc
    return (status.st_ino, status.st_mtime_ns)


def _described(exc: Exception) -> dict[str, str]:
    """A failure for the log: cascade's own errors say what is wrong (never the prompt); any
    other exception only its type and where it was raised, since its text could quote one."""
    if isinstance(exc, CascadeError):
        return {"error": f"{type(exc).__name__}: {exc}"}
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = "" if frame is None else f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}"
    return {"error": type(exc).__name__, "at": where}
