"""The policy's building blocks: strict models, names, prices, timeouts, the verify step, the
prompt, escalation and scorer settings.

Split from :mod:`cascade.policy.model` (which re-exports them) so that file stays the policy's
outline; field docstrings become the JSON Schema's descriptions and ``policies/REFERENCE.md``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

TierName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=9)]

CHECKS = ("length", "empty", "refusal", "invalid_json", "invalid_tool_call", "low_logprob")
Check = Literal["length", "empty", "refusal", "invalid_json", "invalid_tool_call", "low_logprob"]
VolatilePlacement = Literal["system", "user", "keep"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class TokenPrice(_Strict):
    """Pay-per-token pricing (API tiers, or self-hosted with an explicit rate)."""

    input_usd_per_mtok: Money
    """US dollars per million input (prompt) tokens."""
    output_usd_per_mtok: Money
    """US dollars per million output (completion) tokens."""
    cached_input_usd_per_mtok: Money | None = None
    """US dollars per million input tokens read from the provider's prompt cache; defaults to the
    input price."""
    cache_write_usd_per_mtok: Money | None = None
    """US dollars per million input tokens written to the provider's prompt cache (marker-based
    providers charge a premium: Anthropic 1.25x the input price for ``cache.ttl: 5m``, 2x for
    ``1h``). Defaults to that premium on a tier that sends Anthropic markers, else the input
    price (OpenAI, vLLM and SGLang do not charge for writes)."""


class GpuPrice(_Strict):
    """Self-hosted pricing from the GPU's rent and the tier's measured throughput."""

    gpu_usd_per_hour: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=6)]
    """What one GPU of this tier costs per hour, in US dollars (or one engine's GPUs together:
    see ``gpus``)."""
    tokens_per_second: Annotated[float, Field(gt=0)]
    """Measured aggregate decode throughput of one GPU (or engine, as ``gpu_usd_per_hour``
    counts): output tokens per second at the serving batch size, all its sequences together."""
    prefill_tokens_per_second: Annotated[float, Field(gt=0)] | None = None
    """Measured prompt-processing throughput; defaults to 10x the decode throughput. Prompt
    tokens served from the engine's prefix cache cost nothing."""
    gpus: int | None = Field(default=None, ge=1)
    """How many GPUs the tier is billed for, each at ``gpu_usd_per_hour`` and each serving
    ``tokens_per_second``; default: one per engine replica (``replicas``, or 1 for an
    ``endpoint``). The bill is ``gpus x gpu_usd_per_hour`` for every hour, busy or idle:
    ``cascade report`` sets it against what the tier served. An engine spread over several GPUs
    (tensor parallelism) counts as one here when the price and throughput are the whole
    engine's, or as its GPUs when they are per GPU."""
    ops_usd_per_month: Money = Decimal(0)
    """A fixed operations cost of the tier per month in US dollars (people, monitoring, storage),
    added to the bill prorated by the hour over a 30-day month (720 hours); default 0."""
    batch: int | None = Field(default=None, ge=2)
    """Sequences decoded together when ``tokens_per_second`` was measured (the concurrency of
    the vLLM/SGLang benchmark run); default: the tier's ``max_concurrency``. The most one engine
    runs at once: a workload's ``max_tpot_ms`` may lower it, never raise it."""
    single_stream_tokens_per_second: Annotated[float, Field(gt=0)] | None = None
    """Decode speed of one sequence alone (batch 1), output tokens/s, measured at the same
    context as ``tokens_per_second``. With it, a decode step's time is a straight line in the
    batch through the two measurements (the weights are read once per step for the whole batch,
    each sequence's KV cache on its own): that line gives the batch a workload's
    ``max_tpot_ms`` allows, and ``cascade plan``'s capacity per replica. Needed by every
    self_hosted tier a workload with ``max_tpot_ms`` may use; must lie between
    ``tokens_per_second / batch`` and ``tokens_per_second``. Without it ``cascade plan`` takes
    every step to last as long as at the full batch."""
    context_tokens: int | None = Field(default=None, ge=1)
    """Tokens of context per sequence (prompt + output so far, on average) when the two decode
    speeds were measured. ``cascade plan`` scales the KV-cache part of a step to the traffic's
    own context; default: the traffic's context is taken to be the measured one."""


class Timeouts(_Strict):
    """How long a call to a tier may take before it counts as failed (and spills)."""

    connect_s: float = Field(default=2.0, gt=0)
    """Seconds to open a connection."""
    first_byte_s: float = Field(default=30.0, gt=0)
    """Seconds until the tier starts answering (response headers)."""
    total_s: float = Field(default=120.0, gt=0)
    """Seconds for the whole call."""
    stream_idle_s: float = Field(default=30.0, gt=0)
    """Seconds a stream may stay silent between chunks."""


def _price_style(value: Any) -> str:
    # Choose the price model from the keys given, so a typo is reported against the style the
    # author meant rather than against both.
    keys = value.keys() if isinstance(value, dict) else vars(value).keys()
    return "GpuPrice" if {"gpu_usd_per_hour", "tokens_per_second"} & set(keys) else "TokenPrice"


Price = Annotated[
    Annotated[TokenPrice, Tag("TokenPrice")] | Annotated[GpuPrice, Tag("GpuPrice")],
    Discriminator(_price_style),
]


class Verify(_Strict):
    """The verify step on one tier: gather evidence on its answer and let the verifier judge it.

    After the tier answers (and its answer passes the ``escalation.checks``), the router asks for
    *witnesses* — more samples of this tier (``samples``), another cheap tier's answer to the same
    request (``witness``), or both — and the verifier (``verifier.model``) returns P(the answer is
    good enough). At or above ``threshold`` the answer is kept; below it the request escalates to
    the next stronger tier. Evidence is paid for: each witness call is an attempt in the ledger
    (role ``witness`` or ``sample``) with its cost. Streams are verified only when buffered
    (``escalation.streaming: buffer``); a passthrough stream reaches the client before there is an
    answer to judge.
    """

    samples: int | None = Field(default=None, ge=2, le=8)
    """Answers to ask this tier for in one call (OpenAI's ``n``; vLLM and SGLang decode them on
    one shared prefill, so the prompt is paid once): one is the candidate, the others its
    witnesses. The tier must accept ``n``; most API providers other than OpenAI do not."""
    witness: TierName | None = None
    """Another (cheap) tier that gets the same request in parallel; its answer is a witness."""
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Keep the answer when the verifier's confidence is at least this; else escalate. Set it with
    ``cascade calibrate --kind verifier``."""
    answer: Literal["first", "majority"] = "first"
    """With ``samples``: return the first sample (``first``), or a sample whose final answer the
    most samples share (``majority``; ties go to the first). The verifier judges the returned
    answer, with the other samples as its witnesses."""
    on_missing_evidence: Literal["accept", "escalate"] = "accept"
    """When no witness answered (the witness tier failed or was saturated, or the tier sent fewer
    samples than asked): keep the checked answer unverified (``accept``), or escalate."""

    @model_validator(mode="after")
    def _some_evidence(self) -> Verify:
        if self.samples is None and self.witness is None:
            raise ValueError("give samples (answers from this tier) or witness (another tier)")
        if self.answer == "majority" and self.samples is None:
            raise ValueError("answer: majority picks among samples; set samples")
        return self


class PromptCache(_Strict):
    """Provider prompt caching on an API tier: the markers the proxy adds so that the stable
    prefix (tools, system prompt) is cached by providers that cache only what a request marks.

    Self-hosted engines (vLLM, SGLang) and OpenAI cache a repeated prefix on their own; Anthropic
    caches a prefix only up to a ``cache_control`` breakpoint, at most four per request, above a
    minimum length, and charges for the write (see ``price.cache_write_usd_per_mtok``). A
    request that already carries ``cache_control`` keeps its own and gets none added.
    """

    markers: Literal["auto", "anthropic", "openai", "off"] = "auto"
    """auto: what the tier's provider accepts and profits from: Anthropic ``cache_control``
    breakpoints for ``anthropic/`` models, OpenAI's ``prompt_cache_key`` (the prefix hash, so
    requests with one prefix reach one cache) for ``openai/`` models called at OpenAI (no
    ``endpoint``), nothing for other providers. anthropic / openai: send that kind to a provider
    that accepts it under another name (Claude on Bedrock or Vertex AI through litellm, an
    OpenAI-compatible endpoint that reads ``prompt_cache_key``). off: send none."""
    ttl: Literal["5m", "1h"] = "5m"
    """How long an Anthropic cache entry lives after its last use. 1h writes cost 2x the input
    price instead of 1.25x: worth it when a prefix comes back less often than every five minutes
    but within the hour."""
    min_tokens: int | None = Field(default=None, ge=1)
    """The shortest prefix (estimated tokens) that gets a breakpoint; the provider caches none
    shorter. Default: the model's minimum (Claude Sonnet 4.5 and older Sonnet/Opus 1,024; Haiku
    3.x and Sonnet 4.6 2,048; Opus 4.5+ and Haiku 4.5 4,096)."""
    history: bool = False
    """Also mark the end of a conversation's history (the message before the last user message),
    so the next turn reads the earlier turns from the cache. Each turn then writes its new
    tokens at the write price; it pays when conversations continue within the ttl and no
    per-request line (a timestamp) sits in the system prompt."""
    document_min_tokens: int | None = Field(default=None, ge=1)
    """Also mark the end of each text part of a user message at least this long (a shared
    document sent as its own content part before the question). Off by default."""

    @field_validator("markers", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false (and `on` as true): take them as written.
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class Engine(_Strict):
    """How the proxy judges a self-hosted tier's load from its engines' own ``/metrics``.

    Each replica's Prometheus page (vLLM or SGLang) is read in the background, so that every
    proxy replica sees the engines' own load instead of only its own calls in flight.

    A tier whose every replica is saturated (or skipped) spills as when its own
    ``max_concurrency`` slots are full, but no request waits in this proxy's queue for it: the
    engine's own queue is what is full. A replica not read yet is judged by this proxy's count."""

    metrics: Literal["vllm", "sglang", "off"] = "off"
    """Which engine's metric names to read (off: only this proxy's own count of calls): vLLM's
    ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``
    (``vllm:gpu_cache_usage_perc`` before 0.9), or SGLang's ``sglang:num_running_reqs``,
    ``sglang:num_queue_reqs``, ``sglang:token_usage`` (it needs ``--enable-metrics``)."""
    metrics_path: str = Field(default="/metrics", pattern=r"^/")
    """Path of the metrics page on each replica's host (the endpoint's ``/v1`` is dropped)."""
    scrape_interval_s: float = Field(default=1.0, gt=0)
    """How often each replica's metrics are read."""
    scrape_timeout_s: float = Field(default=0.5, gt=0)
    """How long one read may take before it counts as failed."""
    stale_after_s: float = Field(default=5.0, gt=0)
    """A replica whose last good read is older than this (or never succeeded, once a read has
    failed) is unreachable (see ``on_unreachable``); more than ``scrape_interval_s``."""
    max_waiting: int | None = Field(default=None, ge=0)
    """Saturated when the engine holds at least this many requests waiting (its own queue,
    summed over its data-parallel engines); unset: the queue never saturates it."""
    max_kv_usage: float | None = Field(default=None, gt=0, le=1)
    """Saturated when the engine's KV-cache usage (0..1) is at least this; unset: never."""
    on_unreachable: Literal["skip", "own_count"] = "own_count"
    """A replica whose metrics cannot be read: ``skip`` it (no request is sent there until its
    metrics are back), or judge it by this proxy's own calls in flight (``own_count``)."""

    @field_validator("metrics", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false: take it as written (true names no engine).
        return "off" if value is False else value

    @model_validator(mode="after")
    def _stale_after_a_read(self) -> Engine:
        if self.stale_after_s <= self.scrape_interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must be more than scrape_interval_s "
                f"({self.scrape_interval_s:g}): every replica would go stale between two reads"
            )
        return self


_DEFAULT_CHECKS: tuple[Check, ...] = ("length", "empty", "invalid_json")


class Escalation(_Strict):
    """Checks on a cheaper tier's answer that send the request to the next tier."""

    checks: list[Check] = Field(default_factory=lambda: list(_DEFAULT_CHECKS))
    """Which checks run: length (cut by max_tokens), empty, refusal, invalid_json (when
    response_format asks for JSON), invalid_tool_call, low_logprob."""
    min_mean_logprob: float = Field(default=-1.5, le=0)
    """For low_logprob: escalate when the answer's mean token logprob is below this."""
    max_attempts: int = Field(default=3, ge=1, le=10)
    """Most tier calls one request may make (first call, escalations and spills together)."""
    streaming: Literal["buffer", "passthrough"] = "buffer"
    """buffer: verify a streamed answer before its first byte reaches the client; passthrough:
    stream at once (no escalation after the first byte)."""


class PromptSettings(_Strict):
    """How the prompt step treats requests."""

    volatile: VolatilePlacement = "system"
    """Where volatile lines of the system prompt (timestamps, dates, ids, per-user lines such as
    "Current user: alice@example.com (role: admin).") go, so that the stable prefix stays
    byte-identical and cacheable. system: into a second system message right after the stable
    system messages; they keep the system role's authority and the stable prefix still caches
    (a line that changes on every request stops the cache there, before the conversation's
    history). user: to the start of the last user message, an opt-in: the history before it
    caches too, but what the app said now reads as the user's own claim (an injected "I am admin"
    looks the same), and a secret (a session token) sits where models repeat text. keep: send
    the prompt as written and only report the lines (the cache stops at the first one)."""
    log_prompts: bool = False
    """Put the request's messages on its log line (``request.completed`` or ``request.failed``,
    at most 16,384 characters). Off by default: prompts are often personal data."""

    @model_validator(mode="before")
    @classmethod
    def _no_move_volatile(cls, data: Any) -> Any:
        # Refused rather than mapped: true meant "into the user turn", which is no longer the
        # default, and a silent mapping would keep moving authority without anyone choosing it.
        if isinstance(data, dict) and "move_volatile" in data:
            raise ValueError(
                "move_volatile was replaced by volatile: system | user | keep "
                "(move_volatile: true was volatile: user, false was volatile: keep; "
                "the default, system, keeps volatile lines in the system role)"
            )
        return data


class ScorerSettings(_Strict):
    """Which confidence model scores requests, and where."""

    model: str = "prompt-features-v2"
    """A model shipped in router_models/ (by name) or a path to a model folder."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: the GPU when onnxruntime-gpu can use one, else the CPU."""


class Probe(_Strict):
    """An example request and the tier it must route to; checked by ``cascade policy check``."""

    prompt: str | None = None
    """The user's text (give this or messages)."""
    messages: list[dict[str, Any]] | None = None
    """OpenAI-style chat messages (give this or prompt)."""
    expect: TierName
    """The tier this request must route to."""
    workload: str | None = None
    """Workload class to route it as (default: the policy's default_workload)."""
    name: str | None = None
    """A label for reports (default: the start of the prompt)."""

    @model_validator(mode="after")
    def _one_input(self) -> Probe:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class VerifierSettings(_Strict):
    """Which verifier model judges answers for the tiers that have a ``verify`` block."""

    model: str = "verifier-v2"
    """A verifier shipped in router_models/ (by name) or a path to a verifier model folder."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where it runs; one decision takes well under a millisecond on one CPU core."""


class Budgets(_Strict):
    """What a key's budget covers under this policy, and what happens when it is spent.

    Keys get their budgets from ``cascade keys create --budget``. Before each call the proxy
    reserves the request's worst-case cost from the key's budget, and settles what it really
    cost after.
    """

    on_spent: Literal["refuse", "self_hosted"] = "refuse"
    """When a key's budget cannot cover a request's worst case: ``refuse`` it with OpenAI's
    429 ``insufficient_quota`` (the budget covers all spend, self-hosted tiers' included), or
    serve it from the ``self_hosted`` tiers only (the budget covers API spend; self-hosted spend
    is reported beside it, and a request that names an API tier's model is refused)."""
    max_output_tokens: int = Field(default=4096, ge=1)
    """The output a request under a budget may have when it sets no ``max_tokens`` (it is sent
    to the tier as its ``max_tokens``): without a cap its worst-case cost would be unknown, and
    the budget could be overspent."""
