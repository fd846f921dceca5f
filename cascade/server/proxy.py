"""What a running proxy holds: one Router per policy, shared clients, and policy reloading."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from cascade.core.capacity import InFlightCounter
from cascade.core.planner import Planner
from cascade.core.pricing import Rates
from cascade.errors import CascadeError
from cascade.ledger import AttemptRecord, LedgerService, RequestRecord, open_ledger
from cascade.ledger.store import ANY_TENANT, Owner
from cascade.model.batching import LoopBatcher, MicroBatcher
from cascade.model.scorer import OnnxScorer, Scorer
from cascade.policy.loading import candidate_path, load_policy
from cascade.policy.model import Policy, Tier
from cascade.resources import policy_path
from cascade.run.router import Router
from cascade.server.budget import BudgetBook, open_budgets
from cascade.server.canary import Arm, CanaryArm
from cascade.server.openai_format import BadRequestError
from cascade.server.ratelimit import RateLimiter, open_rate_limits
from cascade.server.settings import ServerSettings
from cascade.server.shadow import Shadows
from cascade.tiers.base import TierClient
from cascade.tiers.engine_scraper import EngineScraper
from cascade.tiers.engines import EngineLoads
from cascade.tiers.pool import ConnectionPool
from cascade.tiers.self_hosted import OpenAICompatibleClient

if TYPE_CHECKING:
    from cascade.tiers.api import LiteLLMClient

log = structlog.get_logger("cascade.proxy")

FileStamp = tuple[int, int]
"""A policy file's inode and modification time (ns): either changes when the file is replaced."""
Stamps = tuple[FileStamp, FileStamp | None]
"""A policy file's stamp, and its canary candidate's (None: no canary, or no such file)."""


def _stamp(path: Path) -> FileStamp:
    """What tells a changed policy file from the one loaded (stat follows the symlinks)."""
    status = os.stat(path)
    return (status.st_ino, status.st_mtime_ns)


def _stamps(path: Path, policy: Policy) -> Stamps:
    """The stamps of a policy's file and of the candidate its canary names (OSError: the policy
    file cannot be read; a candidate that cannot be read stamps None, and so does none)."""
    canary = policy.learning.canary
    if canary is None:
        return (_stamp(path), None)
    try:
        return (_stamp(path), _stamp(candidate_path(path, canary.policy)))
    except FileNotFoundError:
        return (_stamp(path), None)


class Proxy:
    """Routers by policy name, plus everything they share; built in the app's lifespan."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._seed = settings.explore_seed
        self.routers: dict[str, Router] = {}
        self.canaries: dict[str, CanaryArm] = {}
        """Each policy's canary, where its ``learning.canary`` names one."""
        self.default = ""
        self.engines = EngineLoads()
        """What the self-hosted tiers' engines say of their load (read in the background)."""
        self.capacity = InFlightCounter(self.engines)
        self._files: dict[str, tuple[Path, Stamps]] = {}
        self._scorers: dict[tuple[str, str], Scorer] = {}
        self._batchers: dict[tuple[str, str], LoopBatcher | MicroBatcher] = {}
        self._clients: dict[str, TierClient] = {}
        self._api: LiteLLMClient | None = None
        self._stack = AsyncExitStack()
        self.ledger: LedgerService | None = None
        self.budgets: BudgetBook | None = None
        """This worker's blocks of the keys' budgets (with a ledger and virtual keys)."""
        self.rate_limits: RateLimiter | None = None
        """This worker's share of the keys' rate limits (with a ledger and virtual keys)."""
        self._reloader: asyncio.Task[None] | None = None
        self._scraper: EngineScraper | None = None
        self.shadows = Shadows(self._scorer, self._batcher, self.capacity)
        """Candidate policies deciding beside the live ones, never acted on (``--shadow``)."""

    async def start(self) -> None:
        """Load every policy and open the shared connection pool (fails fast on a bad policy)."""
        pool = ConnectionPool()
        self._stack.push_async_callback(pool.aclose)
        self._clients["self_hosted"] = OpenAICompatibleClient(pool, engines=self.engines)
        for name in self.settings.policies:
            # Not resolve(): a ConfigMap volume's file is a symlink through ``..data``, which the
            # kubelet swaps to a new directory on update and then deletes the old one.
            path = policy_path(name).absolute()
            policy = load_policy(path)
            if policy.name in self.routers:
                raise CascadeError(f"{path}: a policy named {policy.name!r} is already loaded")
            self._files[policy.name] = (path, _stamps(path, policy))
            self.routers[policy.name] = await self._router(policy)
            await self._set_canary(policy)
            self.default = self.default or policy.name
        await self.shadows.load(self.settings.shadows, self.routers)
        scraper = EngineScraper(self.engines)
        self._stack.push_async_callback(scraper.aclose)
        scraper.retarget(self._tiers())
        self._scraper = scraper
        if self.settings.database_url is not None:
            await self._open_ledger(self.settings.database_url)  # closed with the stack
        if self.settings.reload_interval_s > 0:
            self._reloader = asyncio.create_task(self._watch())
        # Everything loaded so far (model, policies, litellm) lives as long as the process: keep
        # the cyclic collector from walking it on every full collection during requests.
        gc.collect()
        gc.freeze()

    async def close(self) -> None:
        """Stop reloading, finish queued scoring, flush the ledger, close the connection pool."""
        if self._reloader is not None:
            self._reloader.cancel()
        for batcher in self._batchers.values():
            await batcher.aclose()
        if self._api is not None:
            await self._api.aclose()
        await self._stack.aclose()

    async def _open_ledger(self, url: str) -> None:
        ledger = open_ledger(
            url,
            spool_path=self.settings.spool_path,
            migrate=self.settings.migrate_on_start,
            adopt_spools=self.settings.adopt_spools,
        )
        # Closing the stack flushes every acknowledged row to the database or the spool.
        self.ledger = await self._stack.enter_async_context(ledger)
        if self.settings.virtual_keys:  # budgets are the keys': settled, then given back at close
            self.budgets = await self._stack.enter_async_context(open_budgets(url))
            self.rate_limits = await self._stack.enter_async_context(open_rate_limits(url))

    @property
    def keeps_ledger(self) -> bool:
        """Whether requests are recorded (callers can skip building rows when not)."""
        return self.ledger is not None

    def record(self, request: RequestRecord, attempts: Sequence[AttemptRecord]) -> None:
        """Hand one request's rows to the ledger (never blocks; no-op without a ledger)."""
        if self.ledger is not None:
            self.ledger.submit(request, attempts)

    async def mark_useless(self, request_id: str, *, tenant: Owner = ANY_TENANT) -> bool:
        """Mark a request's answer useless; False when the ledger has no such request (of
        ``tenant``'s, when given)."""
        if self.ledger is None:
            raise BadRequestError(404, "this proxy keeps no ledger (start it with a database)")
        return await self.ledger.mark_useless(request_id, tenant=tenant)

    def resolve(self, model: str) -> tuple[Router, str | None]:
        """The router for a request's model name, and the tier it pins (None: route it)."""
        if model == "cascade":
            return self.routers[self.default], None
        if model.startswith("cascade/"):
            name = model.removeprefix("cascade/")
            if name in self.routers:
                return self.routers[name], None
            raise BadRequestError(
                404,
                f"unknown policy {name!r}; this proxy serves: {', '.join(self.routers)}",
                param="model",
                code="model_not_found",
            )
        ordered = [self.routers[self.default], *self.routers.values()]
        for router in ordered:
            for tier in router.policy.tiers:
                if model in (tier.model, tier.name):
                    return router, tier.name
        raise BadRequestError(
            404,
            f"unknown model {model!r}; use 'cascade' (or 'cascade/<policy>') to route, or a "
            f"tier's model: {', '.join(self.model_names())}",
            param="model",
            code="model_not_found",
        )

    def model_names(self) -> list[str]:
        """Every model name a client may send."""
        names = ["cascade", *(f"cascade/{name}" for name in self.routers)]
        for router in self.routers.values():
            names += [t.model for t in router.policy.tiers if t.model not in names]
        return names

    def arm(
        self, router: Router, pinned: str | None, request_id: str, tenant: str | None
    ) -> tuple[Router, Arm | None]:
        """The router a request runs under and its canary arm: the live policy's router and
        None where the policy has no canary or the request pins a tier; else the arm's router."""
        canary = self.canaries.get(router.policy.name)
        if canary is None or pinned is not None:
            return router, None
        arm = canary.arm(request_id, tenant)
        return (canary.router if arm == "canary" else router), arm

    async def reload(self) -> None:
        """Re-read changed policy files (and canary candidates); an invalid file is refused and
        the old policy, and its canary, stay."""
        for name, (path, seen) in list(self._files.items()):
            try:
                stamps = _stamps(path, self.routers[name].policy)
            except OSError as exc:
                log.warning("policy.reload_failed", policy=name, file=str(path), error=str(exc))
                continue
            if stamps == seen:
                continue
            self._files[name] = (path, stamps)
            try:
                policy = load_policy(path)
                planner = Planner(
                    policy, self._scorer(policy), self.capacity, explore_seed=self._seed
                )
                canary = policy.learning.canary
                trial = None  # the candidate's planner: its models load, or the file is refused
                if canary is not None:
                    trial = Planner(
                        canary.candidate,
                        self._scorer(canary.candidate),
                        self.capacity,
                        explore_seed=self._seed,
                    )
            except CascadeError as exc:
                log.error("policy.reload_refused", policy=name, file=str(path), error=str(exc))
                continue
            if policy.name != name:
                log.error(
                    "policy.reload_refused",
                    policy=name,
                    file=str(path),
                    error=f"the file now names policy {policy.name!r}; restart to rename",
                )
                continue
            self.routers[name].planner = planner
            self.routers[name].batcher = await self._batcher(policy)
            await self._set_canary(policy, trial)
            self._files[name] = (path, _stamps(path, policy))  # the candidate may be another file
            log.info("policy.reloaded", policy=name, version=policy.fingerprint)
            if self._scraper is not None:  # read the engines the policies now name
                self._scraper.retarget(self._tiers())

    async def _set_canary(self, policy: Policy, planner: Planner | None = None) -> None:
        """Run ``policy``'s canary (a router for its candidate, planned by ``planner`` when
        given), or none when it has none."""
        canary = policy.learning.canary
        if canary is None:
            if self.canaries.pop(policy.name, None) is not None:
                log.info("policy.canary_ended", policy=policy.name)
            return
        candidate = canary.candidate
        running = self.canaries.get(policy.name)
        if running is None:
            router = await self._router(candidate)
        else:  # keep its tier health; route with the candidate as loaded now
            router = running.router
            router.planner = planner or Planner(
                candidate, self._scorer(candidate), self.capacity, explore_seed=self._seed
            )
            router.batcher = await self._batcher(candidate)
        self.canaries[policy.name] = CanaryArm(router, canary.share, canary.by)
        log.info(
            "policy.canary",
            policy=policy.name,
            candidate=canary.policy,
            version=candidate.fingerprint,
            share=canary.share,
            by=canary.by,
        )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            await self.reload()
            await self.shadows.reload(self.routers)

    async def _router(self, policy: Policy) -> Router:
        if any(t.kind == "api" for t in policy.tiers) and "api" not in self._clients:
            from cascade.tiers.api import LiteLLMClient  # noqa: PLC0415 - litellm is heavy

            self._api = LiteLLMClient()
            self._clients["api"] = self._api
        for tier, variable in self._missing_keys(policy):
            log.warning("tier.key_missing", policy=policy.name, tier=tier, variable=variable)
        planner = Planner(policy, self._scorer(policy), self.capacity, explore_seed=self._seed)
        return Router(
            planner,
            self._clients,
            batcher=await self._batcher(policy),
            capacity=self.capacity,
            api_rates=self._rates_from_litellm,
        )

    def missing_keys(self) -> dict[str, str]:
        """API tiers whose key is not set now, as ``{"policy/tier": variable}`` (they answer
        nothing until it is: requests spill past them, or get a 503 naming the variable)."""
        return {
            f"{router.policy.name}/{tier}": variable
            for router in self.routers.values()
            for tier, variable in self._missing_keys(router.policy)
        }

    def _missing_keys(self, policy: Policy) -> list[tuple[str, str]]:
        if self._api is None:
            return []
        found = ((t.name, self._api.missing_key(t)) for t in policy.tiers if t.kind == "api")
        return [(tier, variable) for tier, variable in found if variable is not None]

    def _rates_from_litellm(self, tier: Tier, service_tier: str | None) -> Rates | None:
        return self._api.rates(tier, service_tier) if self._api is not None else None

    def _scorer(self, policy: Policy) -> Scorer:
        key = (policy.scorer.model, policy.scorer.device)
        if key not in self._scorers:
            self._scorers[key] = OnnxScorer(policy.scorer.model, device=policy.scorer.device)
        return self._scorers[key]

    async def _batcher(self, policy: Policy) -> LoopBatcher | MicroBatcher | None:
        key = (policy.scorer.model, policy.scorer.device)
        mode = self.settings.batch_scoring
        if mode == "never":
            return None
        if key not in self._batchers:
            scorer = self._scorer(policy)
            on_gpu = getattr(scorer, "device", "cpu") == "cuda"
            if mode == "loop" or (mode == "auto" and not on_gpu):
                self._batchers[key] = LoopBatcher(scorer)
            else:
                batcher = MicroBatcher(scorer, max_wait_ms=self.settings.batch_wait_ms)
                self._batchers[key] = await batcher.__aenter__()
        return self._batchers[key]

    def _tiers(self) -> list[Tier]:
        routers = [*self.routers.values(), *(c.router for c in self.canaries.values())]
        return [tier for router in routers for tier in router.policy.tiers]

    def in_flight(self) -> Mapping[str, int]:
        """Calls in flight per tier."""
        return self.capacity.snapshot()
