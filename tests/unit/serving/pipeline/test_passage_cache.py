"""The first level: an LRU of store values bounded in bytes, where the count of bytes is what tracemalloc measures."""

import os
import tracemalloc

import pytest

from nestrank.serving.pipeline.passage_cache import PassageCache


def test_least_recently_used_values_go_first():
    cache = PassageCache(max_bytes=3 * (1000 + 300))
    for name in (b"a", b"b", b"c"):
        cache.put(name, os.urandom(1000))
    assert cache.get(b"a") is not None  # a is now the most recent: b goes next
    cache.put(b"d", os.urandom(1000))
    assert [cache.get(k) is not None for k in (b"a", b"b", b"c", b"d")] == [True, False, True, True]
    assert cache.stats.evictions == 1 and cache.stats.entries == 3


def test_a_value_larger_than_the_bound_is_not_kept():
    cache = PassageCache(max_bytes=500)
    cache.put(b"big", os.urandom(1000))
    assert cache.get(b"big") is None and cache.stats.bytes == 0
    with pytest.raises(ValueError):
        PassageCache(-1)


@pytest.mark.parametrize("value_bytes", [1_328, 82_000])  # one group at the Nano width; 256 tokens at ratio 4
def test_the_bound_counts_what_entries_really_hold(value_bytes):
    """tracemalloc's measure of the memory 2,000 entries keep alive (keys and values made as a store fetch makes
    them, then handed over), against the cache's own count of them."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = PassageCache(max_bytes=1 << 30)
    for i in range(2000):
        cache.put(f"nrps:{'0' * 32}:4:{i:032x}".encode(), os.urandom(value_bytes))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert abs(held - cache.stats.bytes) / held < 0.1, (held, cache.stats.bytes)
