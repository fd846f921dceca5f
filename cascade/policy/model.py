"""The policy's shape: pydantic models that reject unknown keys.

Field docstrings become the descriptions in the generated JSON Schema (``policies/
policy.schema.json``), which editors show while a policy is being written, and in
``policies/REFERENCE.md``.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, model_validator

from cascade.policy.learning import Learning
from cascade.policy.parts import (
    CHECKS,
    Budgets,
    Check,
    Engine,
    Escalation,
    GpuPrice,
    Money,
    Price,
    Probe,
    PromptCache,
    PromptSettings,
    ScorerSettings,
    TierName,
    Timeouts,
    TokenPrice,
    VerifierSettings,
    Verify,
    VolatilePlacement,
    _Strict,
)
from cascade.policy.service_tiers import ServiceTier, ServiceTierName, service_tier_problems

__all__ = [
    "CHECKS",
    "Budgets",
    "Check",
    "CrossFieldError",
    "Engine",
    "Escalation",
    "GpuPrice",
    "Learning",
    "Money",
    "Policy",
    "Probe",
    "PromptCache",
    "PromptSettings",
    "ScorerSettings",
    "ServiceTier",
    "Tier",
    "TierName",
    "Timeouts",
    "TokenPrice",
    "VerifierSettings",
    "Verify",
    "VolatilePlacement",
    "Workload",
]


class Tier(_Strict):
    """One place a request can go: a model at an endpoint, with a price and a capacity."""

    name: TierName
    """Short name used in decisions, headers, reports and probes (lowercase, digits, ``_.-``)."""
    model: str = Field(min_length=1)
    """Model name sent to the endpoint (self_hosted) or litellm model string (api), e.g.
    ``anthropic/claude-sonnet-4-5``."""
    kind: Literal["self_hosted", "api"]
    """``self_hosted``: an OpenAI-compatible server you run (vLLM, SGLang, …); ``api``: a provider
    reached through litellm."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://")
    """Base URL of the OpenAI-compatible API (``http://host:port/v1``). A self_hosted tier needs
    this or ``replicas``; for api tiers it overrides the provider's URL."""
    replicas: list[Annotated[str, Field(pattern=r"^https?://")]] | None = Field(
        default=None, min_length=1
    )
    """Base URLs of the engine replicas serving a self_hosted tier (instead of ``endpoint``),
    each ``http://host:port/v1``; ``routing`` chooses one per request."""
    routing: Literal["prefix", "round_robin", "least_loaded"] = "prefix"
    """How a request picks a replica: ``prefix`` (rendezvous hashing of the stable prefix: the
    same prefix goes to the same replica, so its prefix cache hits, and two proxies that never
    talk choose alike; a replica already at 1.25x the replicas' mean load passes the call to the
    prefix's next replica), ``round_robin`` or ``least_loaded``. A replica's load: its engine's
    running and waiting requests when ``engine`` reads them, or this proxy's calls in flight
    there when higher. A replica that cannot be reached is skipped for ``cooldown_s``."""
    engine: Engine = Field(default_factory=Engine)
    """Read each replica's engine metrics to judge saturation (self_hosted tiers)."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable holding the API key (never the key itself)."""
    price: Price | None = None
    """Token prices or GPU rent + throughput. Required for self_hosted tiers; api tiers without it
    are priced from litellm's offline price map when called."""
    max_concurrency: int = Field(default=64, ge=1)
    """Requests this tier serves at once; beyond it the tier is saturated: requests spill to a
    tier with room, else wait in a tier's queue (``max_queue``)."""
    max_queue: int | None = Field(default=None, ge=0)
    """Requests that may wait for one of this tier's slots when all ``max_concurrency`` are busy
    and no tier they may spill to has one free (default: as many as ``max_concurrency``; 0: none
    wait). First come, first served. A request that finds the queue full is refused: it goes
    to the next tier with a free slot, or the client gets a 503 with ``Retry-After``."""
    queue_timeout_s: float = Field(default=5.0, ge=0)
    """Longest a request waits in this tier's queue for a slot; then it goes to the next tier
    with a free slot, or the client gets a 503 with ``Retry-After``."""
    overflow: TierName | None = None
    """Tier that takes this tier's requests when it is saturated or failing (usually an API)."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    """Connect, first-byte, total and stream-idle limits for calls to this tier."""
    max_failures: int = Field(default=3, ge=1)
    """Consecutive failed calls after which the tier is skipped for ``cooldown_s``."""
    cooldown_s: float = Field(default=10.0, ge=0)
    """Seconds a failing tier is skipped before it is tried again."""
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    """Route here when the scorer's confidence is at least this (0 = take everything that reaches
    it). Thresholds must not increase from one tier to the next."""
    verify: Verify | None = None
    """Judge this tier's answers with the verifier before keeping them (none: the checks only)."""
    cache: PromptCache = Field(default_factory=PromptCache)
    """Prompt-caching markers for an API tier's provider (on by default where they pay)."""
    service_tiers: dict[ServiceTierName, ServiceTier] = Field(default_factory=dict)
    """The provider's service tiers (latency tiers) some workloads are sent at, keyed by the
    ``service_tier`` value (OpenAI ``flex``/``priority``, Gemini ``flex``/``priority``,
    Anthropic ``auto``/``standard_only``); API tiers only. Default: none, every call at the
    provider's default."""
    description: str = ""
    """Free text for humans."""

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every replica's base URL (``endpoint`` alone, or ``replicas``)."""
        if self.replicas is not None:
            return tuple(self.replicas)
        return () if self.endpoint is None else (self.endpoint,)

    @property
    def queue_limit(self) -> int:
        """Requests that may wait for a slot: ``max_queue``, else ``max_concurrency``."""
        return self.max_concurrency if self.max_queue is None else self.max_queue

    @model_validator(mode="after")
    def _self_hosted_needs_endpoint_and_price(self) -> Tier:
        if self.kind == "self_hosted" and self.endpoint is None and self.replicas is None:
            raise ValueError(
                "a self_hosted tier needs an endpoint (http://host:port/v1) or replicas "
                "(a list of them)"
            )
        if self.endpoint is not None and self.replicas is not None:
            raise ValueError("a tier takes an endpoint or replicas, not both")
        if self.kind == "api" and (self.replicas is not None or self.engine.metrics != "off"):
            raise ValueError("replicas and engine are for self_hosted tiers")
        if self.kind == "self_hosted" and self.price is None:
            raise ValueError(
                "a self_hosted tier needs a price (gpu_usd_per_hour + tokens_per_second)"
            )
        if self.kind == "self_hosted" and self.cache.markers in ("anthropic", "openai"):
            raise ValueError(
                f"cache.markers: {self.cache.markers} is for api tiers; a self_hosted engine "
                "(vLLM, SGLang) caches repeated prefixes on its own (allowed here: auto, off)"
            )
        return self

    @property
    def serving_batch(self) -> int:
        """Sequences one engine decodes together at most: ``price.batch``, else
        ``max_concurrency``."""
        batch = self.price.batch if isinstance(self.price, GpuPrice) else None
        return self.max_concurrency if batch is None else batch

    @model_validator(mode="after")
    def _single_stream_within_the_batch_speed(self) -> Tier:
        price = self.price
        if not isinstance(price, GpuPrice) or price.single_stream_tokens_per_second is None:
            return self
        low, high = price.tokens_per_second / self.serving_batch, price.tokens_per_second
        if not low <= price.single_stream_tokens_per_second <= high:
            raise ValueError(
                f"price.single_stream_tokens_per_second {price.single_stream_tokens_per_second:g}"
                f" must lie between tokens_per_second / batch ({low:g}: a sequence alone is no"
                f" slower than in a batch of {self.serving_batch}) and tokens_per_second"
                f" ({high:g}: a batch decodes at least as many tokens a second as one sequence)"
            )
        return self


class Workload(_Strict):
    """A class of traffic (interactive, batch, …) and the tiers it may use."""

    tiers: list[TierName] | None = None
    """Tiers this workload may use, a subset of the policy's tiers (default: all)."""
    spill: bool = True
    """May a saturated tier's requests go to its overflow tier? When false they wait in the
    tier's queue instead (``max_queue``, ``queue_timeout_s``)."""
    expected_output_tokens: int = Field(default=256, ge=1)
    """Output tokens assumed for a cost estimate when the request sets no max_tokens."""
    max_tpot_ms: float | None = Field(default=None, gt=0)
    """Latency target: the most milliseconds between two output tokens of one sequence on a
    self_hosted tier (TPOT). It sets the batch each such tier serves this workload at: the
    largest, up to ``price.batch``, whose decode step (the line through ``tokens_per_second``
    and ``single_stream_tokens_per_second``, which every such tier must state) fits, at least 1.
    A smaller batch costs more per token: the decision's estimate and ``cascade plan`` price
    the workload at it, and ``cascade plan`` sizes fleets so it holds. Default: none (the full
    batch). API tiers are not affected."""
    max_history_tokens: int | None = Field(default=None, ge=1)
    """Opt-in cap on the conversation's history (default: none, everything is sent). The
    leading system/developer messages (the stable prefix) and the tools are always sent; of the
    rest, the oldest whole turns (a user message with the replies, tool calls and tool results
    that follow it) are dropped until what remains fits this many estimated tokens. The last
    user turn is always sent, even alone over the cap. System/developer messages later in the
    conversation are kept. Each trimmed request says so in the ``x-cascade-history-trimmed``
    header and its ledger row. Trade-off: the trimmed conversation's bytes change after the cut
    from one request to the next, so the history stops caching there (the stable prefix still
    caches); a cap pays when old turns cost more than the cache saves on them."""
    description: str = ""
    """Free text for humans."""


Problem = tuple[tuple[str | int, ...], str]


class CrossFieldError(ValueError):
    """Problems that span fields, each with the path it concerns (used for file:line reports)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{_dotted(loc)}: {msg}" for loc, msg in problems))


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Policy(_Strict):
    """A routing policy: tiers cheapest first, workloads, escalation rules and probes."""

    version: Literal[1] = 1
    """Policy file format version."""
    name: TierName
    """The policy's name: clients select it with the model name ``cascade/<name>``."""
    description: str = ""
    """Free text for humans."""
    tiers: list[Tier] = Field(min_length=1)
    """The tiers, cheapest first: a request goes to the first whose threshold it clears."""
    workloads: dict[str, Workload] = Field(default_factory=lambda: {"interactive": Workload()})
    """Workload classes by name."""
    default_workload: str = "interactive"
    """Workload used when a request names none."""
    escalation: Escalation = Field(default_factory=Escalation)
    """When a cheaper tier's answer is rejected and the next tier asked."""
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    """Prompt handling."""
    scorer: ScorerSettings = Field(default_factory=ScorerSettings)
    """The confidence model."""
    verifier: VerifierSettings = Field(default_factory=VerifierSettings)
    """The verifier model, used by tiers with a ``verify`` block."""
    budgets: Budgets = Field(default_factory=Budgets)
    """What a key's budget covers, and what happens when it is spent."""
    learning: Learning = Field(default_factory=Learning)
    """Exploration and the features kept for replay (:mod:`cascade.policy.learning`)."""
    probes: list[Probe] = Field(default_factory=list)
    """Example requests with the tier each must route to."""

    _source: str = PrivateAttr(default="<policy>")

    @cached_property
    def fingerprint(self) -> str:
        """A short content hash that identifies this version of the policy in the ledger.

        Of the validated policy, so comments and formatting do not change it.
        """
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    @property
    def source(self) -> str:
        """Where the policy came from (a file path, or ``<policy>`` when built in code)."""
        return self._source

    @property
    def verifies(self) -> bool:
        """True when some tier has a ``verify`` block (the verifier model is then needed)."""
        return any(t.verify is not None for t in self.tiers)

    def tier(self, name: str) -> Tier:
        """The tier called ``name`` (KeyError if there is none)."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    @model_validator(mode="after")
    def _cross_check(self) -> Policy:
        problems = [*self._tier_problems(), *self._workload_problems(), *self._probe_problems()]
        if problems:
            raise CrossFieldError(problems)
        return self

    def _tier_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        names = [t.name for t in self.tiers]
        seen: set[str] = set()
        for i, tier in enumerate(self.tiers):
            if tier.name in seen:
                problems.append((("tiers", i, "name"), f"duplicate tier name {tier.name!r}"))
            seen.add(tier.name)
            problems.extend(self._verify_problems(i, tier, names))
            problems.extend(service_tier_problems(i, tier, set(self.workloads)))
            if tier.overflow is not None and tier.overflow not in names:
                problems.append((("tiers", i, "overflow"), self._unknown_tier(tier.overflow)))
            elif tier.overflow == tier.name:
                problems.append((("tiers", i, "overflow"), "a tier cannot overflow to itself"))
            previous = self.tiers[i - 1].threshold if i else 1.0
            if tier.threshold > previous:
                problems.append(
                    (
                        ("tiers", i, "threshold"),
                        f"{tier.threshold} is above the previous tier's {previous}; tiers are"
                        " listed cheapest first and thresholds must not increase",
                    )
                )
        return problems

    def _verify_problems(self, i: int, tier: Tier, names: list[str]) -> list[Problem]:
        if tier.verify is None:
            return []
        where = ("tiers", i, "verify")
        witness = tier.verify.witness
        if witness is not None and witness not in names:
            return [((*where, "witness"), self._unknown_tier(witness))]
        if witness == tier.name:
            return [((*where, "witness"), "a tier cannot witness itself; use samples")]
        if i == len(self.tiers) - 1:
            return [(where, "the strongest tier has no tier to escalate to: nothing to verify for")]
        return []

    def _workload_problems(self) -> list[Problem]:
        names = {t.name for t in self.tiers}
        problems: list[Problem] = []
        for key, workload in self.workloads.items():
            for j, name in enumerate(workload.tiers or []):
                if name not in names:
                    problems.append((("workloads", key, "tiers", j), self._unknown_tier(name)))
            if workload.tiers == []:
                problems.append((("workloads", key, "tiers"), "a workload needs at least one tier"))
            problems.extend(self._latency_problems(key, workload))
        if self.default_workload not in self.workloads:
            message = self._unknown_workload(self.default_workload)
            problems.append((("default_workload",), f"{message} (the default is 'interactive')"))
        return problems

    def _latency_problems(self, key: str, workload: Workload) -> list[Problem]:
        if workload.max_tpot_ms is None:
            return []
        unknown = [
            t.name
            for t in self.tiers
            if (workload.tiers is None or t.name in workload.tiers)
            and isinstance(t.price, GpuPrice)
            and t.price.single_stream_tokens_per_second is None
        ]
        if not unknown:
            return []
        message = (
            "a latency target needs each self_hosted tier the workload may use to state "
            f"price.single_stream_tokens_per_second; missing on {', '.join(unknown)}"
        )
        return [(("workloads", key, "max_tpot_ms"), message)]

    def _probe_problems(self) -> list[Problem]:
        names = {t.name for t in self.tiers}
        problems: list[Problem] = []
        for k, probe in enumerate(self.probes):
            if probe.expect not in names:
                problems.append((("probes", k, "expect"), self._unknown_tier(probe.expect)))
            if probe.workload is not None and probe.workload not in self.workloads:
                problems.append((("probes", k, "workload"), self._unknown_workload(probe.workload)))
        return problems

    def _unknown_tier(self, name: str) -> str:
        return f"unknown tier {name!r}; allowed: {', '.join(t.name for t in self.tiers)}"

    def _unknown_workload(self, name: str) -> str:
        return f"unknown workload {name!r}; allowed: {', '.join(self.workloads)}"
