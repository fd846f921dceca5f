"""Is prompt caching paying? Per tier and per stable prefix: tokens read from and written to the
providers' caches, what the reads saved and what the writes cost.

Pure Python over the ledger's attempts (:class:`~cascade.ledger.queries.RequestFacts`), priced at
each tier's rates as the policy gives them now. For a group of calls:

- hit rate = Σ read tokens ÷ Σ prompt tokens; calls hit = calls that read anything ÷ calls;
- saved = Σ read tokens x (input price - cache-read price): what the reads did not cost;
- write premium = Σ written tokens x (cache-write price - input price): what the writes cost
  beyond plain input (Anthropic: 0.25x input for the 5-minute lifetime, 1x for an hour);
- net = saved - write premium;
- break-even = the reads per written token at which the net is zero,
  (write price - input price) ÷ (input price - cache-read price): 0.28 for Anthropic's 5-minute
  writes (0.25 ÷ 0.9), 1.11 for one-hour writes; reads per write = Σ read ÷ Σ written.

Two ways caching loses money are named. A prefix written on several calls whose reads stay below
the break-even: its entry expires before it is read again (the lifetime is too short for its
traffic). Many prefixes each written once and never read: every request brought a prefix of its
own, so something in it changes on every request (a volatile line the prompt step did not
catch; the prefix hash covers the whole stable prefix).
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cascade.core.pricing import Rates
from cascade.ledger.queries import RequestFacts

__all__ = [
    "CacheLine",
    "CacheReport",
    "build_cache_report",
    "cache_html",
    "cache_json",
    "format_cache",
]

LOSING_MIN_WRITES = 3
"""A prefix is named as losing only after this many calls wrote it (one write proves nothing)."""
TOP_PREFIXES = 10
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class CacheLine:
    """One tier's or one (tier, prefix)'s caching over the window."""

    tier: str
    prefix_hash: str | None
    """None for a tier's line."""
    calls: int
    calls_hit: int
    """Calls that read from the cache."""
    calls_written: int
    """Calls that wrote to it."""
    prompt_tokens: int
    read_tokens: int
    written_tokens: int
    saved_usd: Decimal | None
    """None when the tier has no price."""
    write_premium_usd: Decimal | None
    break_even: float | None
    """Reads per written token at which caching pays for itself (None: writes cost no premium,
    or reads save nothing)."""

    @property
    def hit_rate(self) -> float | None:
        return self.read_tokens / self.prompt_tokens if self.prompt_tokens else None

    @property
    def reads_per_write(self) -> float | None:
        return self.read_tokens / self.written_tokens if self.written_tokens else None

    @property
    def net_usd(self) -> Decimal | None:
        if self.saved_usd is None or self.write_premium_usd is None:
            return None
        return self.saved_usd - self.write_premium_usd

    @property
    def losing(self) -> bool:
        """Written on enough calls, and read too rarely to pay for the writes."""
        net = self.net_usd
        return self.calls_written >= LOSING_MIN_WRITES and net is not None and net < 0


@dataclass(frozen=True, slots=True)
class CacheReport:
    tiers: tuple[CacheLine, ...]
    prefixes: tuple[CacheLine, ...]
    """The prefixes that wrote or read the most tokens, largest first (at most ``TOP_PREFIXES``)."""
    losing: tuple[CacheLine, ...]
    """Every prefix whose writes cost more than its reads saved (see :attr:`CacheLine.losing`)."""
    single_use: tuple[CacheLine, ...] = ()
    """Per tier, the prefixes written on one call and never read, summed into one line
    (``prefix_hash`` None), when there are at least ``LOSING_MIN_WRITES`` of them: each request
    brought a prefix of its own, so something in it changes on every request."""

    @property
    def empty(self) -> bool:
        return not any(line.read_tokens or line.written_tokens for line in self.tiers)


@dataclass
class _Sums:
    calls: int = 0
    calls_hit: int = 0
    calls_written: int = 0
    prompt: int = 0
    read: int = 0
    written: int = 0


def build_cache_report(
    facts: Iterable[RequestFacts], rates: Mapping[str, Rates | None]
) -> CacheReport:
    """Sum every answered call's cache use by tier and by (tier, prefix); ``rates`` by tier
    name (a tier missing there or None is reported without money)."""
    by_tier: dict[str, _Sums] = defaultdict(_Sums)
    by_prefix: dict[tuple[str, str | None], _Sums] = defaultdict(_Sums)
    for fact in facts:
        for attempt in fact.attempts:
            if attempt.outcome == "error" or attempt.prompt_tokens == 0:
                continue
            for sums in (by_tier[attempt.tier], by_prefix[attempt.tier, fact.prefix_hash]):
                sums.calls += 1
                sums.calls_hit += attempt.cached_tokens > 0
                sums.calls_written += attempt.cache_write_tokens > 0
                sums.prompt += attempt.prompt_tokens
                sums.read += attempt.cached_tokens
                sums.written += attempt.cache_write_tokens
    tiers = tuple(_line(t, None, s, rates.get(t)) for t, s in sorted(by_tier.items()))
    prefixes = [_line(t, p, s, rates.get(t)) for (t, p), s in by_prefix.items()]
    prefixes.sort(key=lambda line: (-(line.read_tokens + line.written_tokens), line.tier))
    top = tuple(line for line in prefixes if line.read_tokens or line.written_tokens)
    losing = tuple(line for line in prefixes if line.losing)
    once: dict[str, _Sums] = defaultdict(_Sums)
    for (tier, _), sums in by_prefix.items():
        if sums.calls == sums.calls_written == 1 and sums.read == 0:
            total = once[tier]
            total.calls += 1
            total.calls_written += 1
            total.prompt += sums.prompt
            total.written += sums.written
    single = tuple(
        _line(tier, None, sums, rates.get(tier))
        for tier, sums in sorted(once.items())
        if sums.calls >= LOSING_MIN_WRITES
    )
    return CacheReport(tiers, top[:TOP_PREFIXES], losing, single)


def _line(tier: str, prefix: str | None, sums: _Sums, rates: Rates | None) -> CacheLine:
    saved = premium = None
    break_even = None
    if rates is not None:
        write = rates.input if rates.cache_write is None else rates.cache_write
        per_read = rates.input - rates.cached_input
        per_write = write - rates.input
        saved = sums.read * per_read
        premium = sums.written * per_write
        if per_read > 0 and per_write > 0:
            break_even = float(per_write / per_read)
    return CacheLine(
        tier,
        prefix,
        sums.calls,
        sums.calls_hit,
        sums.calls_written,
        sums.prompt,
        sums.read,
        sums.written,
        saved,
        premium,
        break_even,
    )


def format_cache(report: CacheReport) -> list[str]:
    """The report's lines for ``cascade report`` (none when no call used a cache)."""
    if report.empty:
        return []
    lines = ["prompt caching (reads save, writes cost a premium over input):"]
    for line in report.tiers:
        lines.append(f"  {line.tier:<20}  {_describe(line)}")
    if report.prefixes:
        lines.append("  by prefix (largest first):")
        for line in report.prefixes:
            lines.append(f"    {line.tier}/{line.prefix_hash or '-':<16}  {_describe(line)}")
    for line in report.single_use:
        lines.append(
            f"  ! {line.calls_written} prefixes on {line.tier} were written once and never read "
            f"({line.written_tokens} tokens, writes ${_money(line.write_premium_usd)}): a line "
            "of the system prompt probably changes on every request (a volatile line the "
            "prompt step did not catch: compare two requests' system prompts)"
        )
    for line in report.losing:
        lines.append(
            f"  ! prefix {line.prefix_hash or '-'} on {line.tier} was written on "
            f"{line.calls_written} calls and read {_ratio(line.reads_per_write)} times "
            f"per written token (break-even {_ratio(line.break_even)}): its cache entries expire "
            "before they are read: a lifetime too short for its traffic (try cache.ttl: 1h, "
            "or markers: off for this traffic)"
        )
    return lines


def _describe(line: CacheLine) -> str:
    hit = "-" if line.hit_rate is None else f"{line.hit_rate:.0%}"
    text = (
        f"hit rate {hit} ({line.calls_hit}/{line.calls} calls), read {line.read_tokens}, "
        f"written {line.written_tokens} tokens"
    )
    if line.saved_usd is not None and line.write_premium_usd is not None:
        net = line.saved_usd - line.write_premium_usd
        text += (
            f"; saved ${line.saved_usd:.4f}, writes ${line.write_premium_usd:.4f}, net ${net:.4f}"
        )
    return text


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def cache_json(report: CacheReport) -> dict[str, Any]:
    """The report as JSON-ready data (money as decimal strings)."""
    return {
        "tiers": [_line_json(line) for line in report.tiers],
        "prefixes": [_line_json(line) for line in report.prefixes],
        "losing_prefixes": [_line_json(line) for line in report.losing],
        "single_use_prefixes": [_line_json(line) for line in report.single_use],
    }


def _line_json(line: CacheLine) -> dict[str, Any]:
    def money(value: Decimal | None) -> str | None:
        return None if value is None else str(value.normalize()) if value else "0"

    return {
        "tier": line.tier,
        "prefix_hash": line.prefix_hash,
        "calls": line.calls,
        "calls_hit": line.calls_hit,
        "calls_written": line.calls_written,
        "prompt_tokens": line.prompt_tokens,
        "read_tokens": line.read_tokens,
        "written_tokens": line.written_tokens,
        "hit_rate": line.hit_rate,
        "reads_per_write": line.reads_per_write,
        "break_even_reads_per_write": line.break_even,
        "saved_usd": money(line.saved_usd),
        "write_premium_usd": money(line.write_premium_usd),
        "net_usd": money(line.net_usd),
    }


def cache_html(report: CacheReport) -> str:
    """The report's section of the HTML page ('' when no call used a cache)."""
    if report.empty:
        return ""
    head = (
        "<tr><th>tier / prefix</th><th>hit rate</th><th>calls hit</th><th>read</th>"
        "<th>written</th><th>reads per write (break-even)</th><th>saved</th><th>writes</th>"
        "<th>net</th></tr>"
    )
    rows = "".join(_html_row(line) for line in (*report.tiers, *report.prefixes))
    warnings = "".join(
        f"<p><b>Prefix {html.escape(line.prefix_hash or '-')}</b> on "
        f"{html.escape(line.tier)} was written on {line.calls_written} calls and read "
        f"{_ratio(line.reads_per_write)} times per written token (break-even "
        f"{_ratio(line.break_even)}): its entries expire before they are read.</p>"
        for line in report.losing
    ) + "".join(
        f"<p><b>{line.calls_written} prefixes</b> on {html.escape(line.tier)} were written once "
        "and never read: a line of the system prompt probably changes on every request.</p>"
        for line in report.single_use
    )
    return (
        "<h2>Prompt caching</h2><p class=sub>Reads save the input price less the cache-read "
        "price; writes cost the cache-write price less the input price.</p>"
        f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>{warnings}"
    )


def _html_row(line: CacheLine) -> str:
    name = line.tier if line.prefix_hash is None else f"{line.tier} / {line.prefix_hash}"
    hit = "-" if line.hit_rate is None else f"{line.hit_rate:.0%}"
    cells = [
        name,
        hit,
        f"{line.calls_hit:,}/{line.calls:,}",
        f"{line.read_tokens:,}",
        f"{line.written_tokens:,}",
        f"{_ratio(line.reads_per_write)} ({_ratio(line.break_even)})",
        *(
            "-" if value is None else f"${value:.4f}"
            for value in (line.saved_usd, line.write_premium_usd, line.net_usd)
        ),
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
