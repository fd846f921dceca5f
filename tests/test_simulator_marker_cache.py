"""The simulator's marker cache caches what a request marks, as Anthropic's prompt caching does."""

from __future__ import annotations

import pytest

from cascade.simulator.marker_cache import (
    Block,
    CachePlan,
    InvalidMarkers,
    MarkerCache,
    Ttl,
    minimum_tokens,
)

MODEL = "claude-sonnet-4-5"


def _blocks(*sizes: int, marks: dict[int, Ttl] | None = None, tag: str = "") -> list[Block]:
    """Blocks of the given token counts, marked at the given indexes."""
    marks = marks or {}
    return [Block(f"{tag}block {i}".encode(), size, marks.get(i)) for i, size in enumerate(sizes)]


def _use(cache: MarkerCache, blocks: list[Block], now: float = 0.0) -> CachePlan:
    """One admitted request: plan it and commit it."""
    plan = cache.plan(MODEL, blocks, now)
    cache.commit(plan, now)
    return plan


def test_unmarked_prompt_is_never_cached() -> None:
    """A prompt without cache_control is neither written nor read, however often it comes."""
    cache = MarkerCache()
    blocks = _blocks(3000, 50)
    plans = [_use(cache, blocks) for _ in range(3)]
    assert [(p.read, p.written, p.input_tokens) for p in plans] == [(0, 0, 3050)] * 3
    assert cache.stats.entries == 0


def test_first_request_writes_up_to_the_marker_and_the_second_reads_it() -> None:
    """The marked prefix is written once, then read; the tokens after the marker are input."""
    cache = MarkerCache()
    blocks = _blocks(2000, 100, 30, marks={1: "5m"})
    first, second = _use(cache, blocks, 0.0), _use(cache, blocks, 10.0)
    assert (first.read, first.written, first.input_tokens) == (0, 2100, 30)
    assert (second.read, second.written, second.input_tokens) == (2100, 0, 30)
    assert (cache.stats.read_tokens, cache.stats.creation_tokens) == (2100, 2100)


def test_a_plan_stores_nothing_until_committed() -> None:
    """A request refused after planning (an overloaded tier) leaves the cache as it was."""
    cache = MarkerCache()
    blocks = _blocks(2000, marks={0: "5m"})
    cache.plan(MODEL, blocks, 0.0)
    assert _use(cache, blocks, 1.0).read == 0


def test_prefix_below_the_models_minimum_is_neither_written_nor_read() -> None:
    """A marked prefix shorter than the model's minimum is not cached, without an error."""
    cache = MarkerCache()
    short = _blocks(600, 100, marks={1: "5m"})
    assert [(p.read, p.written) for p in (_use(cache, short), _use(cache, short))] == [(0, 0)] * 2
    haiku = _blocks(1500, marks={0: "5m"})
    for _ in range(2):
        plan = cache.plan("claude-haiku-4-5", haiku, 0.0)
        cache.commit(plan, 0.0)
        assert (plan.read, plan.written) == (0, 0)


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("claude-sonnet-4-5", 1024),
        ("anthropic/claude-sonnet-4-5-20250929", 1024),
        ("claude-opus-4-1", 1024),
        ("claude-3-7-sonnet-20250219", 1024),
        ("claude-3-haiku-20240307", 2048),
        ("claude-3-5-haiku-latest", 2048),
        ("claude-sonnet-4-6", 2048),
        ("claude-haiku-4-5", 4096),
        ("claude-opus-4-5-20251101", 4096),
        ("claude-opus-4-6", 4096),
        ("distill-7b", 1024),
    ],
)
def test_minimum_cacheable_length_follows_the_model(model: str, tokens: int) -> None:
    """Each model family has Anthropic's minimum; an unknown name gets 1024."""
    assert minimum_tokens(model) == tokens


def test_five_minute_entry_expires_and_one_hour_entry_outlives_it() -> None:
    """After 5 minutes only the 1h prefix is read and the 5m part is written again; after an
    hour more nothing is read."""
    cache = MarkerCache()
    blocks = _blocks(2000, 500, 20, marks={0: "1h", 1: "5m"})
    first = _use(cache, blocks, 0.0)
    assert (first.written_1h, first.written_5m) == (2000, 500)
    later = _use(cache, blocks, 301.0)
    assert (later.read, later.written_5m, later.written_1h) == (2000, 500, 0)
    much_later = _use(cache, blocks, 301.0 + 3601.0)
    assert (much_later.read, much_later.written) == (0, 2500)


def test_a_hit_refreshes_the_entrys_lifetime() -> None:
    """Read every four minutes, a 5m entry stays alive well past its first five minutes."""
    cache = MarkerCache()
    blocks = _blocks(2000, marks={0: "5m"})
    _use(cache, blocks, 0.0)
    assert [_use(cache, blocks, t).read for t in (240.0, 480.0, 720.0)] == [2000] * 3
    assert _use(cache, blocks, 720.0 + 301.0).read == 0


def test_lookback_finds_the_previous_turns_prefix_when_the_marker_moves_forward() -> None:
    """A conversation that moves its marker to the new last message reads the previous turn's
    prefix (found by the lookback) and writes only the new turn."""
    cache = MarkerCache()
    turn1 = _blocks(2000, 40, marks={1: "5m"})
    _use(cache, turn1)
    turn2 = [*_blocks(2000, 40), *_blocks(60, 30, marks={1: "5m"}, tag="turn2 ")]
    plan = _use(cache, turn2, 5.0)
    assert (plan.read, plan.written, plan.input_tokens) == (2040, 90, 0)


def test_lookback_stops_twenty_blocks_before_the_marker() -> None:
    """A cached prefix more than 20 blocks before the marker is not found."""
    cache = MarkerCache()
    _use(cache, _blocks(2000, marks={0: "5m"}))
    far = _blocks(2000, *([5] * 21), marks={21: "5m"})
    near = _blocks(2000, *([5] * 20), marks={20: "5m"})
    assert cache.plan(MODEL, far, 1.0).read == 0
    assert cache.plan(MODEL, near, 1.0).read == 2000


def test_the_longest_hit_of_any_marker_wins() -> None:
    """With two markers cached, the later one is read and nothing is written."""
    cache = MarkerCache()
    blocks = _blocks(1500, 800, 10, marks={0: "5m", 1: "5m"})
    _use(cache, blocks)
    plan = _use(cache, blocks, 1.0)
    assert (plan.read, plan.written, plan.input_tokens) == (2300, 0, 10)


def test_a_changed_block_before_the_marker_misses() -> None:
    """Changing anything before the marker (or the model) changes the key: a miss."""
    cache = MarkerCache()
    _use(cache, _blocks(2000, 10, marks={1: "5m"}))
    changed = [Block(b"another system", 2000), Block(b"block 1", 10, "5m")]
    assert cache.plan(MODEL, changed, 1.0).read == 0
    assert cache.plan("claude-opus-4-1", _blocks(2000, 10, marks={1: "5m"}), 1.0).read == 0


def test_more_than_four_markers_is_refused() -> None:
    """A fifth cache_control is a 400 with Anthropic's message."""
    blocks = _blocks(*([300] * 5), marks=dict.fromkeys(range(5), "5m"))
    with pytest.raises(InvalidMarkers) as caught:
        MarkerCache().plan(MODEL, blocks, 0.0)
    assert str(caught.value) == (
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    )
    assert caught.value.status == 400


def test_a_one_hour_marker_after_a_five_minute_one_is_refused() -> None:
    """A longer ttl may not follow a shorter one; the other order is fine."""
    cache = MarkerCache()
    with pytest.raises(InvalidMarkers, match=r"ttl='1h'.*must not come after.*ttl='5m'"):
        cache.plan(MODEL, _blocks(1500, 10, marks={0: "5m", 1: "1h"}), 0.0)
    assert cache.plan(MODEL, _blocks(1500, 10, marks={0: "1h", 1: "5m"}), 0.0).written == 1510


def test_least_recently_used_entry_is_evicted_past_capacity() -> None:
    """A bounded cache drops the entry used longest ago, not the one just read."""
    cache = MarkerCache(capacity=2)
    a, b, c = (_blocks(2000, marks={0: "1h"}, tag=t) for t in ("a", "b", "c"))
    _use(cache, a)
    _use(cache, b)
    _use(cache, a, 1.0)  # a is now the most recently used
    _use(cache, c, 2.0)
    assert cache.stats.entries == 2
    assert cache.plan(MODEL, a, 3.0).read == 2000
    assert cache.plan(MODEL, b, 3.0).read == 0
